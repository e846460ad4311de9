-- metrics_log.lua: every training step and evaluation into a file, one row each.
--   hooks: {on_step: hooks/metrics_log.lua, on_eval: hooks/metrics_log.lua, allow: [io]}
-- The file is $QLORA_METRICS_LOG (default metrics.jsonl in the working directory). A name
-- ending in .csv gets CSV in long form, one row per value: event,step,name,value (steps and
-- evaluations carry different keys, so no fixed set of columns would fit both); anything else
-- gets JSON lines, one object per call.
local qlora = require "qlora"

local path = qlora.env("QLORA_METRICS_LOG") or "metrics.jsonl"
local csv = path:sub(-4):lower() == ".csv"

local function csv_field(v)
  if v == nil then return "" end
  local s = type(v) == "table" and qlora.json.encode(v) or tostring(v)
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

local function append(kind, row)
  local f = assert(io.open(path, "a"))
  if csv then
    if f:seek("end") == 0 then f:write("event,step,name,value\n") end
    local keys = {}
    for k in pairs(row) do if k ~= "step" then keys[#keys + 1] = k end end
    table.sort(keys)
    for _, k in ipairs(keys) do
      f:write(csv_field(kind), ",", csv_field(row.step), ",", csv_field(k), ",", csv_field(row[k]), "\n")
    end
  else
    local copy = { event = kind }
    for k, v in pairs(row) do copy[k] = v end
    f:write(qlora.json.encode(copy), "\n")
  end
  f:close()
end

function on_step(metrics) append("step", metrics) end
function on_eval(results) append("eval", results) end
