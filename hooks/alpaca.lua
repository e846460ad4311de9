-- alpaca.lua: the Alpaca prompt as a format hook (docs/alpaca.md, exact strings).
-- `format: alpaca` does the same in C; this file is the starting point for your own variant:
--   format: lua
--   format_hook: hooks/alpaca.lua
-- The stage appends EOS to the response and masks the prompt (unless train_on_inputs).

local WITH_INPUT = "Below is an instruction that describes a task, paired with an input that provides " ..
  "further context. Write a response that appropriately completes the request.\n\n" ..
  "### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:"
local NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately " ..
  "completes the request.\n\n### Instruction:\n%s\n\n### Response:"

local function need_string(record, key)
  local v = record[key]
  if type(v) ~= "string" then
    error(v == nil and ("missing '" .. key .. "'") or ("'" .. key .. "' must be a string"), 2)
  end
  return v
end

function format(record, ctx)
  local instruction = need_string(record, "instruction")
  local output = need_string(record, "output")
  local input = record.input
  if input ~= nil and type(input) ~= "string" then error("'input' must be a string") end
  local prompt
  if input ~= nil and input ~= "" then
    prompt = string.format(WITH_INPUT, instruction, input)
  else
    prompt = string.format(NO_INPUT, instruction)
  end
  return { prompt = prompt, response = output }
end
