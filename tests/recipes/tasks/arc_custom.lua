-- tests/test_eval_tasks_sources.sh: a benchmark record in its own schema -> evaluate's multiple choice
-- (the ARC prompt, so the scores equal the built-in arc format's on the same questions)
function task(record, ctx)
  if record.q == "skip me" then return nil end
  local gold = record.right
  if type(gold) == "number" then gold = math.tointeger(gold) end
  return {text = "Question: " .. record.q .. "\nAnswer:", choices = record.opts, gold = gold}
end
