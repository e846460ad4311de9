-- chat_common.lua: what the chat-template hooks share (require "chat_common").
-- Accepts {messages = {{role=, content=}, ...}} and ShareGPT {conversations = {{from=, value=}, ...}}.
local M = {}

local ROLES = { human = "user", user = "user", gpt = "assistant", assistant = "assistant",
                model = "assistant", system = "system" }

function M.messages(record)
  local list, rk, ck = record.messages, "role", "content"
  if list == nil then list, rk, ck = record.conversations, "from", "value" end
  if list == nil then error("missing 'messages' (or ShareGPT 'conversations')", 0) end
  if type(list) ~= "table" or #list == 0 then error("'messages' must be a non-empty list", 0) end
  local out = {}
  for i, m in ipairs(list) do
    local role, content = m[rk], m[ck]
    if type(role) ~= "string" or type(content) ~= "string" then
      error(string.format("message %d needs string '%s' and '%s'", i - 1, rk, ck), 0)
    end
    local r = ROLES[role]
    if not r then error(string.format("message %d has unknown role '%s' (system, user or assistant; human and gpt in ShareGPT data; model)", i - 1, role), 0) end
    if r == "system" and i ~= 1 then error(string.format("message %d: a system message may only come first", i - 1), 0) end
    out[i] = { role = r, content = content }
  end
  return out
end

-- Jinja's trim / Python's strip
function M.strip(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

return M
