-- cosine.lua: linear warmup, then cosine decay to a floor (hooks: {lr: hooks/cosine.lua}).
--   lr(step, total_steps, base_lr), step counting from 0
-- Change the two constants to taste (the file's content is part of the cache key).
local WARMUP = 0.03   -- share of the steps spent warming up (or a step count if >= 1)
local FLOOR = 0.1     -- the last lr as a share of base_lr

function lr(step, total_steps, base_lr)
  local warm = WARMUP >= 1 and WARMUP or math.floor(WARMUP * total_steps + 0.5)
  if step < warm then return base_lr * (step + 1) / warm end
  local span = math.max(1, total_steps - 1 - warm)
  local t = math.min(1, (step - warm) / span)
  return base_lr * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))
end
