-- notify_webhook.lua: post a message when a stage or the run ends (nightly jobs).
--   hooks: {on_run_end: hooks/notify_webhook.lua, on_stage_end: hooks/notify_webhook.lua, allow: [http]}
-- The URL comes from $QLORA_WEBHOOK_URL (Slack, Mattermost and Discord-compatible "text"
-- field, plus the full JSON); with it unset the hook only logs. A failed post is a warning,
-- never a failed run. Set QLORA_WEBHOOK_STAGES=1 to be told about every stage too.
local qlora = require "qlora"

local function post(text, data)
  local url = qlora.env("QLORA_WEBHOOK_URL")
  if not url or url == "" then
    qlora.log("info", "webhook: QLORA_WEBHOOK_URL is not set;", text)
    return
  end
  local body = qlora.json.encode({ text = text, content = text, data = data })
  local status, reply = qlora.http_post(url, body, { ["Content-Type"] = "application/json" })
  if not status then
    qlora.log("warn", "webhook:", reply)
  elseif status >= 300 then
    qlora.log("warn", "webhook: HTTP " .. status .. ": " .. tostring(reply):sub(1, 200))
  end
end

function on_stage_end(stage, manifest)
  if qlora.env("QLORA_WEBHOOK_STAGES") ~= "1" then return end
  post("qlora-run: stage " .. stage .. " done", { stage = stage, metrics = manifest and manifest.metrics })
end

function on_run_end(summary)
  local s = type(summary) == "table" and summary or {}
  local status = s.status or (s.ok == false and "failed") or "finished"
  local text = "qlora-run: " .. tostring(s.recipe or "run") .. " " .. tostring(status)
  if s.error then text = text .. ": " .. tostring(s.error) end
  post(text, s)
end
