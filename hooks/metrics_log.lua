-- metrics_log.lua: every training step and evaluation into a file, one row each.
--   hooks: {on_step: hooks/metrics_log.lua, on_eval: hooks/metrics_log.lua, allow: [io]}
-- The file is $QLORA_METRICS_LOG (default metrics.jsonl in the working directory); a name
-- ending in .csv gets CSV with a header from the first row's keys, anything else JSON lines.
local qlora = require "qlora"

local path = qlora.env("QLORA_METRICS_LOG") or "metrics.jsonl"
local csv = path:sub(-4):lower() == ".csv"
local columns -- CSV: fixed by the first row written

local function csv_field(v)
  if v == nil then return "" end
  local s = type(v) == "table" and qlora.json.encode(v) or tostring(v)
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

local function append(kind, row)
  local f = assert(io.open(path, "a"))
  if csv then
    if not columns then
      columns = { "event" }
      local keys = {}
      for k in pairs(row) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do columns[#columns + 1] = k end
      if f:seek("end") == 0 then
        local names = {}
        for i, c in ipairs(columns) do names[i] = csv_field(c) end
        f:write(table.concat(names, ","), "\n")
      end
    end
    local cells = {}
    for i, c in ipairs(columns) do cells[i] = csv_field(c == "event" and kind or row[c]) end
    f:write(table.concat(cells, ","), "\n")
  else
    local copy = { event = kind }
    for k, v in pairs(row) do copy[k] = v end
    f:write(qlora.json.encode(copy), "\n")
  end
  f:close()
end

function on_step(metrics) append("step", metrics) end
function on_eval(results) append("eval", results) end
