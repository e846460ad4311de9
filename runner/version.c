/* version.c: see version.h. */
#include "runner/version.h"

#include <curl/curl.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "qlora_git.h" /* generated at build time by cmake/version.cmake */

#ifndef QLORA_BUILD_TYPE
#define QLORA_BUILD_TYPE "unknown"
#endif

/* "sm_80 sm_86" from CMake's list "80;86" (or "80-real;90-virtual"), passed as "80,86" */
static void cuda_archs(char *out, size_t cap) {
    out[0] = 0;
#ifdef QLORA_CUDA_ARCHS
    const char *p = QLORA_CUDA_ARCHS;
    size_t n = 0;
    while (*p && n + 8 < cap) {
        size_t len = strcspn(p, ",;");
        size_t digits = strspn(p, "0123456789");
        if (digits > len) digits = len;
        n += (size_t)snprintf(out + n, cap - n, "%ssm_%.*s", n ? " " : "", (int)digits, p);
        p += len + (p[len] == ',' || p[len] == ';');
    }
#else
    (void)cap;
#endif
}

const char *version_short(void) {
    static char buf[256];
    if (!buf[0]) {
        char archs[128];
        cuda_archs(archs, sizeof archs);
        snprintf(buf, sizeof buf, "%s (commit %s, %s, %s%s)", QLORA_VERSION, QLORA_GIT_COMMIT, QLORA_BUILD_TYPE,
                 archs[0] ? "CUDA " : "no CUDA: CPU only", archs);
    }
    return buf;
}

static const char *lua_runtime(void) {
    static char buf[16];
    lua_Number v = lua_version(NULL); /* the linked library's LUA_VERSION_NUM, e.g. 504 */
    snprintf(buf, sizeof buf, "%d.%d", (int)v / 100, (int)v % 100);
    return buf;
}

void version_print(FILE *out) {
    fprintf(out, "qlora-run %s\n", version_short());
    fprintf(out, "libyaml %s, Lua %s, libcurl %s, jansson %s, %s\n", yaml_get_version_string(), lua_runtime(),
            curl_version_info(CURLVERSION_NOW)->version, jansson_version_str(), OpenSSL_version(OPENSSL_VERSION));
}

json_t *version_json(void) {
    char archs[128];
    cuda_archs(archs, sizeof archs);
    return json_pack("{s:s, s:s, s:s, s:b, s:s, s:{s:s, s:s, s:s, s:s, s:s}}", "version", QLORA_VERSION, "commit",
                     QLORA_GIT_COMMIT, "build_type", QLORA_BUILD_TYPE, "cuda", archs[0] != 0, "cuda_archs", archs,
                     "libraries", "libyaml", yaml_get_version_string(), "lua", lua_runtime(), "libcurl",
                     curl_version_info(CURLVERSION_NOW)->version, "jansson", jansson_version_str(), "openssl",
                     OpenSSL_version(OPENSSL_VERSION));
}
