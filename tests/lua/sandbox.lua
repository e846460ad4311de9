-- sandbox.lua: probes for test_lua_host.c; each function reports what the sandbox allows.
local qlora = require "qlora"

function probe()
  local binary = load(string.dump(function() return 1 end))
  return {
    os_execute = os.execute ~= nil,
    os_exit = os.exit ~= nil,
    os_remove = os.remove ~= nil,
    os_getenv = os.getenv ~= nil,
    io_popen = io.popen ~= nil,
    io_write = io.write ~= nil,
    dofile = dofile ~= nil,
    loadfile = loadfile ~= nil,
    package = package ~= nil,
    debug = debug ~= nil,
    binary_chunk = binary ~= nil,
    text_chunk = load("return 1 + 1")(),
    clock = type(os.clock()) == "number",
  }
end

function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return true
end

function read_file(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("a")
  f:close()
  return s
end

function hog_memory()
  local t = {}
  for i = 1, 1e8 do t[i] = string.rep("x", 64) .. i end
  return #t
end

function spin()
  local n = 0
  while true do n = n + 1 end
end

function fail_here(record)
  local x = nil
  return x.field -- line 50: attempt to index a nil value
end

function bad_arg()
  return qlora.count_tokens(nil)
end

function json_roundtrip(s)
  return qlora.json.encode(qlora.json.decode(s))
end

function tokens(text)
  return qlora.tokenize(text), qlora.count_tokens(text)
end

function post(url)
  return qlora.http_post(url, "{}", {["Content-Type"] = "application/json"})
end

function env(name)
  return qlora.env(name)
end

function report(name, value)
  qlora.metric(name, value)
  qlora.log("info", "reported", name, value)
  print("printed", 1)
end
