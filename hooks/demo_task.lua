-- demo_task.lua: a small learnable task for the demo recipe: reverse a short string of letters.
--   "abcd" -> "dcba"
-- A tiny model gets clearly better at it within ~100 CPU steps (the loss on the response
-- falls fast; exact matches follow). One file serves three hook points:
--   generate(ctx)              records {instruction, input, output} from the seed (dataset stage,
--                              `generator: hooks/demo_task.lua`)
--   format(record, ctx)        a short prompt, so sequences stay ~20 tokens
--                              (`format: lua, format_hook: hooks/demo_task.lua`)
--   score(prediction, record)  exact match, for the evaluate stage
-- ctx.args (the stage's hook_args) may set: n (records, default 2000), min_len (2), max_len (6),
-- letters ("abcdefgh"), task ("reverse" | "sort" | "upper").
local qlora = require "qlora"

-- a 64-bit LCG (Knuth's MMIX constants): the same records on every machine and Lua build
local function rng(seed)
  local state = seed ~ 0x5DEECE66D
  return function(n)
    state = state * 6364136223846793005 + 1442695040888963407
    return ((state >> 33) % n) + 1
  end
end

local TASKS = {
  reverse = { instruction = "Reverse the letters.", run = function(s) return s:reverse() end },
  sort = { instruction = "Sort the letters.", run = function(s)
    local t = {}
    for c in s:gmatch(".") do t[#t + 1] = c end
    table.sort(t)
    return table.concat(t)
  end },
  upper = { instruction = "Write the letters in upper case.", run = function(s) return s:upper() end },
}

local function settings(ctx)
  local a = type(ctx) == "table" and type(ctx.args) == "table" and ctx.args or {}
  local task = TASKS[a.task or "reverse"]
  if not task then error("hook_args.task must be reverse, sort or upper, not '" .. tostring(a.task) .. "'") end
  return {
    n = math.tointeger(a.n or ctx.max_records or 2000) or error("hook_args.n must be an integer"),
    min_len = a.min_len or 2, max_len = a.max_len or 6,
    letters = a.letters or "abcdefgh", task = task,
  }
end

function generate(ctx)
  local s = settings(ctx)
  if s.min_len < 1 or s.max_len < s.min_len then error("hook_args: need 1 <= min_len <= max_len") end
  local draw = rng(math.tointeger(ctx.seed) or 0)
  for _ = 1, s.n do
    local len = s.min_len + draw(s.max_len - s.min_len + 1) - 1
    local chars = {}
    for k = 1, len do
      local i = draw(#s.letters)
      chars[k] = s.letters:sub(i, i)
    end
    local input = table.concat(chars)
    coroutine.yield({ instruction = s.task.instruction, input = input, output = s.task.run(input) })
  end
  qlora.log("debug", "generated", s.n, "records")
end

function format(record, ctx)
  return { prompt = record.instruction .. "\n" .. record.input .. "\n=", response = record.output }
end

function score(prediction, record)
  local p = prediction:gsub("^%s+", ""):gsub("%s+$", "")
  return p == record.output
end
