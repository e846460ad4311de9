/* test_jinja.c: the chat-template renderer (tokenizer/jinja.h).
 *
 * CASES: templates with their variables and what jinja2 renders, the way transformers
 * configures it (sandboxed, trim_blocks, lstrip_blocks, loop controls, its tojson). The
 * expected strings were rendered by jinja2 3.1.6; each row exercises one corner (whitespace
 * control, loops, scopes, macros and call blocks, slicing, tests, filters, str and dict
 * methods, Python's printing of numbers and lists, UTF-8). Then the failure paths: syntax
 * errors with line:col, raise_exception, the step, output, memory and depth bounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "test.h"
#include "tokenizer/jinja.h"

static const struct {
    const char *src, *ctx, *want;
} CASES[] = {
    {"a\n  {% if true %}\n  x\n  {% endif %}\nb",
     "{}",
     "a\n  x\nb"},
    {"a {{- ' b ' -}} c",
     "{}",
     "a b c"},
    {"{%- for i in range(3) -%}\n {{ i }}\n{%- endfor %}",
     "{}",
     "012"},
    {"  {%+ if true %}x{% endif %}",
     "{}",
     "  x"},
    {"{# c #}\nx{#- d -#}  y",
     "{}",
     "xy"},
    {"{% raw %}{{ x }}{% endraw %}",
     "{}",
     "{{ x }}"},
    {"{% for m in messages %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}|{% endfor %}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \" Sys \"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}",
     "01TrueFalse33|12FalseFalse32|23FalseTrue31|"},
    {"{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }} {% endfor %}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \" Sys \"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}",
     "1:user 2:assistant "},
    {"{% for x in [] %}a{% else %}empty{% endfor %}",
     "{}",
     "empty"},
    {"{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}{{ i }}{% endfor %}",
     "{}",
     "0134"},
    {"{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
     "{}",
     "a=1;b=2;"},
    {"{% for m in messages[::-1] %}{{ m.role }},{% endfor %}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \" Sys \"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}",
     "assistant,user,system,"},
    {"{% for c in 'héllo' %}[{{ c }}]{% endfor %}",
     "{}",
     "[h][é][l][l][o]"},
    {"{% for a in [1,2] %}{% for b in [3,4] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{% endfor %}",
     "{}",
     "113 214 123 224 "},
    {"{% set x = 1 %}{% for i in [1,2] %}{% set x = x + i %}{% endfor %}{{ x }}",
     "{}",
     "1"},
    {"{% set ns = namespace(n=0, s='') %}{% for i in [1,2,3] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
     "{}",
     "6"},
    {"{% set x %}block {{ 1 + 1 }}{% endset %}[{{ x }}]",
     "{}",
     "[block 2]"},
    {"{% set a, b = 1, 2 %}{{ a }}{{ b }}",
     "{}",
     "12"},
    {"{% macro f(a, b='d') %}<{{ a }}{{ b }}>{% endmacro %}{{ f(1) }}{{ f(2, b='x') }}{{ f('q', 'r') }}",
     "{}",
     "<1d><2x><qr>"},
    {"{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}inner{% endcall %}",
     "{}",
     "[inner]"},
    {"{% macro w() %}[{{ caller(5) }}]{% endmacro %}{% call(n) w() %}n={{ n }}{% endcall %}",
     "{}",
     "[n=5]"},
    {"{% filter upper %}abc {{ 'd' }}{% endfilter %}",
     "{}",
     "ABC D"},
    {"{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 4 / 2 }} {{ 2 ** 10 }}",
     "{}",
     "7 3 -4 1 2 3.5 2.0 1024"},
    {"{{ 'a' ~ 1 ~ none ~ true }}",
     "{}",
     "a1NoneTrue"},
    {"{{ 'x' if false }}|{{ 'y' if true else 'z' }}|{{ none or 'd' }}|{{ 0 and 1 }}",
     "{}",
     "|y|d|0"},
    {"{{ [1, 2, 3][1:] }} {{ [1, 2, 3][-1] }} {{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ [1,2,3,4,5][4:0:-2] }}",
     "{}",
     "[2, 3] 3 el olleh [5, 3]"},
    {"{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }}",
     "{}",
     "True True True True"},
    {"{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 3 is odd }} {{ 4 is divisibleby 2 }} {{ 1 is not none }}",
     "{}",
     "False True True True True True True True"},
    {"{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ 3 > 2 > 1 }}",
     "{}",
     "True True True True"},
    {"{{ 1.5 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1e-7 }} {{ 100.0 }} {{ -0.5 }}",
     "{}",
     "1.5 1e+20 0.30000000000000004 1e-07 100.0 -0.5"},
    {"{{ [1, 'a', none, true, {'k': 'v'}] }} {{ {'a': [1]} }} {{ \"it's\" }}{{ ['it\\'s'] }}",
     "{}",
     "[1, 'a', None, True, {'k': 'v'}] {'a': [1]} it's[\"it's\"]"},
    {"{{ 'a' 'b' }}{{ \"\\u00e9\\n\" }}",
     "{}",
     "abé\n"},
    {"{{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|{{ 'hello world' | title }}|{{ 'hELLO' | capitalize }}",
     "{}",
     "x|a|AB|ab|Hello World|Hello"},
    {"{{ [1, 2] | length }} {{ 'héllo' | length }} {{ {'a': 1} | count }} {{ x | length }}",
     "{}",
     "2 5 1 0"},
    {"{{ ['a', 'b'] | join(', ') }} {{ [1, 2] | join }} {{ messages | map(attribute='role') | join('/') }}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \" Sys \"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}",
     "a, b 12 system/user/assistant"},
    {"{{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | rejectattr('role', 'eq', 'user') | map(attribute='content') | list }}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \" Sys \"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}",
     "1 [' Sys ', 'Yo']"},
    {"{{ [1, 0, 2, none] | select | list }} {{ [1, 2, 3, 4] | reject('odd') | list }} {{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }}",
     "{}",
     "[1, 2] [2, 4] [1, 2, 3] ['A', 'b', 'c'] [3, 2, 1]"},
    {"{{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ 'abc' | list }} {{ {'b': 1, 'a': 2} | dictsort }} {{ {'b': 1, 'a': 2} | items | list }}",
     "{}",
     "1 3 ['a', 'b', 'c'] [('a', 2), ('b', 1)] [('b', 1), ('a', 2)]"},
    {"{{ x | default('d') }} {{ '' | default('e', true) }} {{ none | default('f') }} {{ 0 | d(5, true) }}",
     "{}",
     "d e None 5"},
    {"{{ 'a-b-a' | replace('a', 'x') }} {{ '12' | int + 1 }} {{ 'x' | int }} {{ 3.7 | int }} {{ 5 | string ~ '!' }} {{ [1, 2, 1, 3] | unique | list }}",
     "{}",
     "x-b-x 13 0 3 5! [1, 2, 3]"},
    {"{{ {'a': 1, 'b': [1, 2], 'c': 'é\"\\n'} | tojson }}|{{ {'a': {'b': 1}} | tojson(indent=2) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}",
     "{}",
     "{\"a\": 1, \"b\": [1, 2], \"c\": \"é\\\"\\n\"}|{\n  \"a\": {\n    \"b\": 1\n  }\n}|[1,2]|{\"a\": 2, \"b\": 1}"},
    {"{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}",
     "{}",
     "a\n  b\n\n  c|  a\n  b"},
    {"{{ [1, 2, 3] | sum }} {{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ -3 | abs }} {{ [1,2] | reverse | list }}",
     "{}",
     "6 1 3 3 [2, 1]"},
    {"{{ '  x '.strip() }}|{{ 'xxa'.lstrip('x') }}|{{ 'a\\n\\n'.rstrip('\\n') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}",
     "{}",
     "x|a|a|['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']"},
    {"{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'ab'.upper() }} {{ 'hello world'.title() }} {{ 'abcb'.find('b') }} {{ 'abcb'.rfind('b') }} {{ 'abcb'.count('b') }}",
     "{}",
     "True True bba AB Hello World 1 3 2"},
    {"{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('b', 'n') }} {{ {'a': 1}.get('b') }} {{ {'a': 1, 'b': 2}.keys() | list }} {{ {'a': 1}.values() | list }}",
     "{}",
     "1 n None ['a', 'b'] [1]"},
    {"{{ messages[0].content.strip() }}{{ messages[0]['role'] }}{{ messages[1].get('content') }}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \" Sys \"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}",
     "SyssystemHi"},
    {"{{ 'éÀß'.upper() }} {{ 'ÉΣΑ'.lower() }} {{ 'x</think>y'.split('</think>')[-1] }}",
     "{}",
     "ÉÀSS éσα y"},
    {"{{ 'a' * 3 }} {{ [0] * 2 }} {{ [1] + [2] }} {{ 'a' + 'b' }}",
     "{}",
     "aaa [0, 0] [1, 2] ab"},
    {"{{ dict(a=1, b='x') }} {{ range(2, 8, 3) | list }} {{ range(3, 0, -1) | list }}",
     "{}",
     "{'a': 1, 'b': 'x'} [2, 5] [3, 2, 1]"},
    {"{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}{% set rest = messages[1:] %}{% else %}{% set rest = messages %}{% endif %}{{ sys | trim }}{{ rest | length }}",
     "{\"messages\": [{\"role\": \"system\", \"content\": \" Sys \"}, {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}",
     "Sys2"},
    {"{% if x %}a{% elif y %}b{% elif z %}c{% else %}d{% endif %}",
     "{\"y\": 0, \"z\": [1]}",
     "c"},
    {"{{ '😀'[0] }}{{ '日本語'[1] }}{{ '日本語'[-1:] }}",
     "{}",
     "😀本語"},
};

static char *render(const char *src, const char *ctx_json, const jinja_limits *lim, int *rc_out) {
    jinja_template *t = NULL;
    int rc = jinja_parse(&t, src, strlen(src), "t.jinja");
    char *out = NULL;
    if (!rc) {
        json_error_t je;
        json_t *ctx = json_loads(ctx_json, 0, &je);
        jinja_result r;
        rc = jinja_render(t, ctx, lim, &r);
        if (!rc) {
            out = strdup(r.text);
            jinja_result_free(&r);
        }
        json_decref(ctx);
    }
    jinja_free(&t);
    if (rc_out) *rc_out = rc;
    return out;
}

TEST(jinja2_cases) {
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        int rc;
        char *got = render(CASES[i].src, CASES[i].ctx, NULL, &rc);
        if (!got || strcmp(got, CASES[i].want)) {
            fprintf(stderr, "case %zu: %s\n  want: %s\n  got:  %s (%s)\n", i, CASES[i].src, CASES[i].want,
                    got ? got : "(error)", got ? "" : err_msg());
            CHECK(0);
        }
        free(got);
    }
}

/* an error's message starts with want (the template's name, line and column) */
static void check_error(const char *src, const char *ctx, const jinja_limits *lim, const char *want) {
    int rc;
    char *got = render(src, ctx, lim, &rc);
    CHECK(got == NULL);
    CHECK_EQ_INT(rc, ERR_DATA);
    if (strncmp(err_msg(), want, strlen(want))) {
        fprintf(stderr, "error of %s\n  want: %s...\n  got:  %s\n", src, want, err_msg());
        CHECK(0);
    }
    free(got);
}

TEST(syntax_errors_have_positions) {
    check_error("ab\n{% if x %}\nno end", "{}", NULL, "t.jinja:2:4: 'if' is never closed");
    check_error("{{ 1 + }}", "{}", NULL, "t.jinja:1:8: expected an expression");
    check_error("x\n  {% endfor %}", "{}", NULL, "t.jinja:2:6: unexpected 'endfor'");
    check_error("{{ x | nosuch }}", "{}", NULL, "t.jinja:1:8: no filter named 'nosuch'");
    check_error("{% include 'x' %}", "{}", NULL, "t.jinja:1:4: 'include' reads other files");
    check_error("{{ 'abc }}", "{}", NULL, "t.jinja:1:4: unterminated string literal");
    check_error("{{ x", "{}", NULL, "t.jinja:1:3: unclosed '{{'");
    check_error("{% for %}", "{}", NULL, "t.jinja:1:8: expected a name");
}

TEST(runtime_errors) {
    check_error("a\n {{- raise_exception('roles must alternate') }}", "{}", NULL,
                "t.jinja:2:6: template error: roles must alternate");
    check_error("{{ x.y.z }}", "{}", NULL, "t.jinja:1:5: cannot read attribute 'y' of an undefined value");
    check_error("{{ 1 + 'a' }}", "{}", NULL, "t.jinja:1:6: unsupported operand types for +: 'int' and 'str'");
    check_error("{% set x = 1 %}{% set x.y = 2 %}", "{}", NULL, "t.jinja:1:19: cannot assign attribute 'y'");
}

TEST(bounds) {
    jinja_limits lim = {.max_steps = 1000};
    check_error("{% for i in range(10) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", "{}", &lim,
                "t.jinja:1:");
    CHECK(strstr(err_msg(), "more than 1000 steps") != NULL);
    lim = (jinja_limits){.max_output = 100};
    check_error("{% for i in range(1000) %}xx{% endfor %}", "{}", &lim, "t.jinja: the output passes 100 bytes");
    lim = (jinja_limits){.max_memory = 1 << 20};
    check_error("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                "{}", &lim, "t.jinja: the render needs more than 1 MiB of memory");
    lim = (jinja_limits){.max_depth = 10};
    check_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{}", &lim,
                "t.jinja:1:20: macro calls nested more than 10 deep");
    /* a deeply nested expression is refused by the parser, not by the stack */
    size_t n = 5000;
    char *deep = malloc(2 * n + 16), *p = deep;
    p += sprintf(p, "{{ ");
    for (size_t i = 0; i < n; i++) *p++ = '(';
    *p++ = '1';
    for (size_t i = 0; i < n; i++) *p++ = ')';
    strcpy(p, " }}");
    check_error(deep, "{}", NULL, "t.jinja:1:");
    CHECK(strstr(err_msg(), "nested too deeply") != NULL);
    free(deep);
}

TEST(generation_spans) {
    const char *src = "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
                      "{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}";
    jinja_template *t;
    CHECK_EQ_INT(jinja_parse(&t, src, strlen(src), "g"), 0);
    CHECK(jinja_has_generation(t));
    json_t *ctx = json_loads("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", "
                             "\"content\": \"yo\"}, {\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", "
                             "\"content\": \"é\"}]}", 0, NULL);
    jinja_result r;
    CHECK_EQ_INT(jinja_render(t, ctx, NULL, &r), 0);
    CHECK_EQ_STR(r.text, "<user>hi<assistant>yo</s><user>x<assistant>é</s>");
    CHECK_EQ_INT(r.n_gen, 2);
    CHECK_EQ_INT(r.gen[0].begin, 19);
    CHECK_EQ_INT(r.gen[0].end, 25);
    CHECK_EQ_INT(r.gen[1].begin, 43);
    CHECK_EQ_INT(r.gen[1].end, 49); /* é is two bytes */
    jinja_result_free(&r);
    json_decref(ctx);
    jinja_free(&t);
}

TEST(invalid_utf8_template) {
    jinja_template *t = NULL;
    CHECK_EQ_INT(jinja_parse(&t, "ab\xff", 3, "bad.jinja"), ERR_DATA);
    CHECK(strstr(err_msg(), "bad.jinja: byte 2: the template is not valid UTF-8") != NULL);
    CHECK(t == NULL);
}

TEST(strftime_now_uses_the_given_clock) {
    jinja_limits lim = {.now = 86400 * 365};
    int rc;
    setenv("TZ", "UTC", 1);
    char *s = render("{{ strftime_now('%Y-%m-%d') }}", "{}", &lim, &rc);
    CHECK_EQ_STR(s, "1971-01-01");
    free(s);
}

int main(void) {
    RUN(jinja2_cases);
    RUN(syntax_errors_have_positions);
    RUN(runtime_errors);
    RUN(bounds);
    RUN(generation_spans);
    RUN(invalid_utf8_template);
    RUN(strftime_now_uses_the_given_clock);
    return test_summary();
}
