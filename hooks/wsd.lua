-- wsd.lua: warmup-stable-decay (hooks: {lr: hooks/wsd.lua}): a linear warmup, a long stretch at
-- base_lr, then a linear decay over the last DECAY share of the steps down to FLOOR * base_lr.
--   lr(step, total_steps, base_lr), step counting from 0
local WARMUP = 0.05 -- share of the steps (or a count if >= 1)
local DECAY = 0.2   -- share of the steps (or a count if >= 1)
local FLOOR = 0.0

local function steps(x, total) return x >= 1 and x or math.floor(x * total + 0.5) end

function lr(step, total_steps, base_lr)
  local warm, decay = steps(WARMUP, total_steps), steps(DECAY, total_steps)
  local decay_start = total_steps - decay
  if step < warm then return base_lr * (step + 1) / warm end
  if step < decay_start or decay == 0 then return base_lr end
  local t = math.min(1, (step - decay_start + 1) / decay)
  return base_lr * (1 - (1 - FLOOR) * t)
end
