-- stage_copy.lua: a `lua` stage for test_lua_stage.c: reads its input, writes into out_dir.
local qlora = require "qlora"

function run(ctx)
  local src = assert(io.open(ctx.inputs.input .. "/data.txt", "r"))
  local text = src:read("a")
  src:close()
  local out = assert(io.open("copy.txt", "w")) -- relative: lands in ctx.out_dir
  out:write(text:upper())
  out:close()
  qlora.metric("bytes", #text)
  if ctx.args and ctx.args.escape then
    local f = io.open(ctx.inputs.input .. "/evil.txt", "w") -- outside out_dir: refused
    f:close()
  end
  return { copied = #text, stage = ctx.name, from = ctx.input_stages.input }
end
