#!/usr/bin/env python3
"""A hub upload endpoint for tests/test_hub_upload.sh (Python standard library only).

It implements what docs/hub-upload.md describes: repo creation, branch creation, preupload,
the Git LFS batch API (basic with a verify action, and multipart with a completion request),
presigned storage PUTs and the NDJSON commit. Every request is checked against the documented
format: method, content type, exact JSON keys and types, base64, sha256 oids, part sizes and
ETags, the token on the hub's own URLs and never on storage URLs. A request that does not fit
is answered 400 with the reason, and the reason is logged, so the test sees it.

  hub_upload_server.py STATE_DIR   prints the port on stdout, then serves until killed
STATE_DIR/requests.log   one line per request: METHOD PATH AUTH(yes|no) STATUS [problem]
STATE_DIR/repos/ORG/NAME/REV/PATH   committed files
Environment: EXPECT_TOKEN (the token to require), FAIL ("STATUS:STEP[:COUNT]", STEP one of
create branch preupload batch put part complete verify commit; COUNT answers fail, then it
works), LFS_THRESHOLD (bytes; larger or binary files go to LFS), CHUNK (multipart part size),
MULTIPART_THRESHOLD (bytes; larger LFS objects go multipart), HANG_PART (N: the first PUT of part
N is held, unanswered and not stored, and STATE_DIR/hanging is written, so the test can kill the
client mid-upload).

A multipart upload stays open until completed, as S3's does: a later batch answer for the same
object names the same uploadId (with freshly signed part URLs), and the parts it received stay.
"""
import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = sys.argv[1]
TOKEN = os.environ.get("EXPECT_TOKEN", "")
LFS_THRESHOLD = int(os.environ.get("LFS_THRESHOLD", "10485760"))
CHUNK = int(os.environ.get("CHUNK", "65536"))
MULTIPART_THRESHOLD = int(os.environ.get("MULTIPART_THRESHOLD", str(4 * 65536)))
FAIL = os.environ.get("FAIL", "")
HANG_PART = int(os.environ.get("HANG_PART", "0"))
LOCK = threading.RLock()
repos = {}  # "org/name" -> {"private": bool, "branches": {name: {path: bytes}}, "commits": n}
objects = {}  # oid -> bytes (LFS storage)
parts = {}  # (oid, n) -> bytes
uploads = {}  # oid -> uploadId of its open multipart upload
batches = [0]  # batch answers so far: each one signs its URLs anew
hung = []
fail_left = {}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Bad(Exception):
    pass


class Unauthorized(Exception):
    pass


def expect(cond, why):
    if not cond:
        raise Bad(why)


def exact_keys(obj, keys, where, optional=()):
    expect(isinstance(obj, dict), f"{where}: expected a JSON object")
    extra = set(obj) - set(keys) - set(optional)
    missing = set(keys) - set(obj)
    expect(not extra and not missing, f"{where}: keys {sorted(obj)}; expected {sorted(keys)} (+{sorted(optional)})")


def should_fail(step):
    if not FAIL:
        return None
    parts_ = FAIL.split(":")
    status, where = int(parts_[0]), parts_[1]
    if where != step:
        return None
    if len(parts_) > 2:
        with LOCK:
            left = fail_left.setdefault(step, int(parts_[2]))
            if left <= 0:
                return None
            fail_left[step] = left - 1
    return status


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self, status, body=b"", ctype="application/json", headers=None, problem=""):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        # logged before answering: the client sends its next request only after this answer
        auth = "yes" if self.headers.get("Authorization") else "no"
        with LOCK, open(os.path.join(STATE, "requests.log"), "a") as f:
            f.write(f"{self.command} {self.path.split('?')[0]} {auth} {status} {problem}\n")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        expect(self.headers.get("Transfer-Encoding") is None, "chunked bodies are not expected")
        return self.rfile.read(n)

    def query(self, name):
        q = self.path.partition("?")[2]
        for kv in q.split("&"):
            k, _, v = kv.partition("=")
            if k == name:
                return v
        return None

    def need_token(self):
        """the hub's own URLs want the token: 401 as the hub answers, not a format error"""
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            raise Unauthorized()

    def json_body(self, ctype):
        expect(self.headers.get("Content-Type") == ctype, f"Content-Type {self.headers.get('Content-Type')!r}, expected {ctype!r}")
        try:
            return json.loads(self.body())
        except ValueError:
            raise Bad("the body is not JSON")

    def dispatch(self):
        path = self.path.split("?")[0]
        m = re.fullmatch(r"/api/repos/create", path)
        if m and self.command == "POST":
            return self.create()
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/(branch|preupload|commit)/(.+)", path)
        if m and self.command == "POST":
            return getattr(self, m.group(3))(m.group(1), m.group(2), m.group(4))
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and self.command == "POST":
            return self.batch(m.group(2))
        m = re.fullmatch(r"/storage/([0-9a-f]{64})", path)
        if m and self.command == "PUT":
            return self.put(m.group(1))
        m = re.fullmatch(r"/storage/([0-9a-f]{64})/part/(\d+)", path)
        if m and self.command == "PUT":
            return self.part(m.group(1), int(m.group(2)))
        m = re.fullmatch(r"/lfs/complete/([0-9a-f]{64})", path)
        if m and self.command == "POST":
            return self.complete(m.group(1))
        m = re.fullmatch(r"/lfs/verify", path)
        if m and self.command == "POST":
            return self.verify()
        raise Bad(f"no such endpoint: {self.command} {path}")

    def handle_any(self):
        try:
            self.dispatch()
        except Unauthorized:
            self.body()
            self.answer(401, {"error": "Invalid credentials in Authorization header"}, problem="unauthorized")
        except Bad as e:
            self.answer(400, {"error": str(e)}, problem=str(e).replace("\n", " "))

    do_GET = do_POST = do_PUT = handle_any

    def fail(self, step):
        st = should_fail(step)
        if st:
            self.answer(st, {"error": f"injected {st} at {step}"}, problem="injected")
            return True
        return False

    # ---- the hub API ----
    def create(self):
        self.need_token()
        b = self.json_body("application/json")
        exact_keys(b, ["name", "private"], "create", optional=["organization", "type"])
        expect(isinstance(b["private"], bool), "create: private must be a bool")
        if self.fail("create"):
            return
        repo = f"{b.get('organization')}/{b['name']}" if b.get("organization") else b["name"]
        with LOCK:
            if repo in repos:
                return self.answer(409, {"error": "You already created this model repo"})
            repos[repo] = {"private": b["private"], "branches": {"main": {}}, "commits": 0}
        with open(os.path.join(STATE, "created.log"), "a") as f:
            f.write(f"{repo} private={b['private']}\n")
        self.answer(200, {"url": f"http://hub/{repo}"})

    def branch(self, kind, repo, rev):
        self.need_token()
        self.json_body("application/json")
        if self.fail("branch"):
            return
        with LOCK:
            if repo not in repos:
                return self.answer(404, {"error": "Repository not found"})
            if rev in repos[repo]["branches"]:
                return self.answer(409, {"error": "Reference already exists"})
            repos[repo]["branches"][rev] = dict(repos[repo]["branches"]["main"])
        self.answer(200, {})

    def preupload(self, kind, repo, rev):
        self.need_token()
        b = self.json_body("application/json")
        exact_keys(b, ["files"], "preupload")
        if self.fail("preupload"):
            return
        if repo not in repos:
            return self.answer(404, {"error": "Repository not found"})
        out = []
        for f in b["files"]:
            exact_keys(f, ["path", "sample", "size"], "preupload file")
            sample = base64.b64decode(f["sample"], validate=True)
            expect(len(sample) <= 512, "preupload: sample longer than 512 bytes")
            expect(isinstance(f["size"], int) and f["size"] >= len(sample), "preupload: bad size")
            lfs = f["size"] > LFS_THRESHOLD or b"\0" in sample
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self.answer(200, {"files": out})

    def batch(self, repo):
        self.need_token()
        expect(self.headers.get("Accept") == "application/vnd.git-lfs+json", "batch: Accept must be application/vnd.git-lfs+json")
        b = self.json_body("application/vnd.git-lfs+json")
        exact_keys(b, ["operation", "transfers", "objects", "hash_algo"], "batch", optional=["ref"])
        expect(b["operation"] == "upload" and b["hash_algo"] == "sha256", "batch: operation upload, hash_algo sha256")
        expect(b["transfers"] == ["basic", "multipart"], "batch: transfers [basic, multipart]")
        if "ref" in b:
            exact_keys(b["ref"], ["name"], "batch ref")
        if self.fail("batch"):
            return
        # storage and LFS actions on another origin (localhost, not 127.0.0.1), as the hub's
        # presigned URLs are: the token must not follow them there
        port = self.server.server_address[1]
        base = f"http://localhost:{port}"
        out, multipart = [], False
        for o in b["objects"]:
            exact_keys(o, ["oid", "size"], "batch object")
            expect(HEX64.match(o["oid"]) and isinstance(o["size"], int), "batch object: oid is 64 hex, size an integer")
            if o["oid"] in objects:
                out.append({"oid": o["oid"], "size": o["size"]})
                continue
            if o["size"] > MULTIPART_THRESHOLD:
                multipart = True
                n = -(-o["size"] // CHUNK)
                hdr = {"chunk_size": str(CHUNK)}
                with LOCK:
                    uid = uploads.setdefault(o["oid"], f"up{len(uploads) + 1}x{o['oid'][:6]}")
                    batches[0] += 1
                    sig = batches[0]
                for i in range(1, n + 1):
                    hdr[str(i)] = f"{base}/storage/{o['oid']}/part/{i}?uploadId={uid}&X-Amz-Signature=s{i}b{sig}"
                out.append({"oid": o["oid"], "size": o["size"],
                            "actions": {"upload": {"href": f"{base}/lfs/complete/{o['oid']}?uploadId={uid}", "header": hdr}}})
            else:
                out.append({"oid": o["oid"], "size": o["size"], "actions": {
                    "upload": {"href": f"{base}/storage/{o['oid']}?X-Amz-Signature=secret", "header": {"X-Storage-Ticket": "t-" + o["oid"][:8]}},
                    "verify": {"href": f"{base}/lfs/verify", "header": {"X-Verify-Ticket": "v-" + o["oid"][:8]}}}})
        self.answer(200, {"transfer": "multipart" if multipart else "basic", "objects": out}, ctype="application/vnd.git-lfs+json")

    def put(self, oid):
        expect(not self.headers.get("Authorization"), "the token was sent to a storage URL")
        expect(self.headers.get("X-Storage-Ticket") == "t-" + oid[:8], "storage PUT without the action's header")
        data = self.body()
        if self.fail("put"):
            return
        expect(hashlib.sha256(data).hexdigest() == oid, "storage PUT: content does not match its oid")
        with LOCK:
            objects[oid] = data
        self.answer(200, b"", headers={"ETag": '"' + hashlib.md5(data).hexdigest() + '"'})

    def part(self, oid, n):
        expect(not self.headers.get("Authorization"), "the token was sent to a storage URL")
        data = self.body()
        expect(self.query("uploadId") == uploads.get(oid), f"part {n}: uploadId {self.query('uploadId')!r} is not the open upload's")
        if n == HANG_PART and not hung:
            hung.append(n)
            open(os.path.join(STATE, "hanging"), "w").close()
            time.sleep(60)  # the client is killed meanwhile; this part is never stored
            return
        if self.fail("part"):
            return
        expect(0 < len(data) <= CHUNK, f"part {n}: {len(data)} bytes, chunk size {CHUNK}")
        with LOCK:
            parts[(oid, n)] = data
        self.answer(200, b"", headers={"ETag": f'"{hashlib.md5(data).hexdigest()}-{n}"'})

    def complete(self, oid):
        expect(self.headers.get("Accept") == "application/vnd.git-lfs+json", "completion: Accept header")
        b = self.json_body("application/vnd.git-lfs+json")
        exact_keys(b, ["oid", "parts"], "completion")
        expect(b["oid"] == oid, "completion: oid differs from the URL's")
        expect(self.query("uploadId") == uploads.get(oid), "completion: not the open upload's uploadId")
        if self.fail("complete"):
            return
        data = b""
        for i, p in enumerate(b["parts"], 1):
            exact_keys(p, ["partNumber", "etag"], "completion part")
            expect(p["partNumber"] == i, "completion: parts out of order")
            got = parts.get((oid, i))
            expect(got is not None, f"completion: part {i} was never uploaded")
            expect(p["etag"] == f'"{hashlib.md5(got).hexdigest()}-{i}"', f"completion: wrong etag for part {i}")
            expect(i == len(b["parts"]) or len(got) == CHUNK, f"completion: part {i} is not chunk_size bytes")
            data += got
        expect(hashlib.sha256(data).hexdigest() == oid, "completion: the parts do not add up to the oid")
        with LOCK:
            objects[oid] = data
            uploads.pop(oid, None)
        self.answer(200, {"oid": oid})

    def verify(self):
        b = self.json_body("application/vnd.git-lfs+json")
        exact_keys(b, ["oid", "size"], "verify")
        expect(self.headers.get("X-Verify-Ticket") == "v-" + b["oid"][:8], "verify without the action's header")
        if self.fail("verify"):
            return
        expect(b["oid"] in objects and len(objects[b["oid"]]) == b["size"], "verify: object missing or wrong size")
        self.answer(200, {})

    def commit(self, kind, repo, rev):
        self.need_token()
        expect(self.headers.get("Content-Type") == "application/x-ndjson", "commit: Content-Type application/x-ndjson")
        lines = self.body().decode().split("\n")
        expect(lines[-1] == "", "commit: the body must end with a newline")
        lines = [json.loads(x) for x in lines[:-1]]
        exact_keys(lines[0], ["key", "value"], "commit header line")
        expect(lines[0]["key"] == "header", "commit: the first line is the header")
        exact_keys(lines[0]["value"], ["summary", "description"], "commit header")
        files = {}
        for ln in lines[1:]:
            exact_keys(ln, ["key", "value"], "commit line")
            v = ln["value"]
            if ln["key"] == "file":
                exact_keys(v, ["content", "path", "encoding"], "commit file")
                expect(v["encoding"] == "base64", "commit file: encoding base64")
                files[v["path"]] = base64.b64decode(v["content"], validate=True)
            elif ln["key"] == "lfsFile":
                exact_keys(v, ["path", "algo", "oid"], "commit lfsFile")
                expect(v["algo"] == "sha256" and HEX64.match(v["oid"]), "commit lfsFile: algo sha256, oid 64 hex")
                expect(v["oid"] in objects, f"commit lfsFile: {v['path']} was never uploaded")
                files[v["path"]] = objects[v["oid"]]
            else:
                raise Bad(f"commit: unknown line key {ln['key']!r}")
        if self.fail("commit"):
            return
        if repo not in repos:
            return self.answer(404, {"error": "Repository not found"})
        if rev not in repos[repo]["branches"]:
            return self.answer(404, {"error": f"Invalid rev id: {rev}"})
        for p, data in files.items():
            dst = os.path.join(STATE, "repos", repo, rev, p)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(data)
        repos[repo]["commits"] += 1
        oid = hashlib.sha1(f"{repo}{rev}{repos[repo]['commits']}".encode()).hexdigest()
        self.answer(200, {"commitUrl": f"http://hub/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
