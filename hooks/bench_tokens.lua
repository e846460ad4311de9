-- bench_tokens.lua: synthetic rows for the GPU benchmark recipe (recipes/bench-7b.yaml).
-- generate(ctx) yields ctx.args.n records {text = ...} of ctx.args.chars random lowercase letters
-- and spaces; with the byte-level tokenizer of init_model every character is one token, so a
-- record of sequence_len - 2 characters fills one whole row, as the
-- benchmark's random token ids do. Deterministic from the stage's seed.
-- ctx.args: n (records, default 64), chars (characters a record, default 2046: with BOS and EOS
-- exactly 2048 tokens).
local qlora = require "qlora"

-- a 64-bit LCG (Knuth's MMIX constants): the same text on every machine and Lua build
local function rng(seed)
  local state = seed ~ 0x5DEECE66D
  return function(n)
    state = state * 6364136223846793005 + 1442695040888963407
    return ((state >> 33) % n) + 1
  end
end

local LETTERS = "abcdefghijklmnopqrstuvwxyz     "

function generate(ctx)
  local a = type(ctx.args) == "table" and ctx.args or {}
  local n = math.tointeger(a.n or 64) or error("hook_args.n must be an integer")
  local chars = math.tointeger(a.chars or 2046) or error("hook_args.chars must be an integer")
  if n < 1 or chars < 1 then error("hook_args: n and chars must be positive") end
  local draw = rng(math.tointeger(ctx.seed) or 0)
  for _ = 1, n do
    local t = {}
    for k = 1, chars do
      local i = draw(#LETTERS)
      t[k] = LETTERS:sub(i, i)
    end
    coroutine.yield({ text = table.concat(t) })
  end
  qlora.log("debug", "generated", n, "records of", chars, "characters")
end
