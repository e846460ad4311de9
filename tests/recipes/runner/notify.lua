-- on_stage_end / on_run_end for tests/test_runner.sh: appends to $NOTIFY_FILE (needs allow: [io])
local qlora = require "qlora"
local function append(line)
  local f = assert(io.open(qlora.env("NOTIFY_FILE"), "a"))
  f:write(line, "\n")
  f:close()
end
function on_stage_end(stage, manifest)
  append("stage " .. stage .. " " .. manifest.kind)
end
function on_run_end(summary)
  append("run " .. tostring(summary.ok) .. " ran=" .. tostring(summary.ran))
end
