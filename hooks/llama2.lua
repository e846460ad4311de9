-- llama2.lua: the Llama-2 chat template as a format hook (format: lua, format_hook: hooks/llama2.lua).
--   <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST] ...
-- The first <s> is the BOS the stage adds; later turns open with the BOS token as text.
-- Assistant turns with their </s> are trained. `format: chat, chat_template: llama-2` does the same in C.
local chat = require "chat_common"

function format(record, ctx)
  local msgs = chat.messages(record)
  local segments, users, i = {}, 0, 1
  while i <= #msgs do
    local m = msgs[i]
    local c = chat.strip(m.content)
    if m.role == "system" then
      local u = msgs[i + 1]
      if not u or u.role ~= "user" then error("llama-2 needs a user message after the system message", 0) end
      -- the template strips the combined text, not its parts
      segments[#segments + 1] = {
        text = "[INST] " .. chat.strip("<<SYS>>\n" .. m.content .. "\n<</SYS>>\n\n" .. u.content) .. " [/INST]",
        train = false }
      users = users + 1
      i = i + 1
    elseif m.role == "assistant" then
      segments[#segments + 1] = { text = " " .. c .. " ", train = true }
      segments[#segments + 1] = { text = ctx.eos_token, train = true }
    else
      segments[#segments + 1] = { text = (users > 0 and ctx.bos_token or "") .. "[INST] " .. c, train = false }
      segments[#segments + 1] = { text = " [/INST]", train = false }
      users = users + 1
    end
    i = i + 1
  end
  return { segments = segments }
end
