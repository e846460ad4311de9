-- llama3.lua: the Llama-3 chat template as a format hook (format: lua, format_hook: hooks/llama3.lua).
-- Each turn is <|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|>; BOS
-- (<|begin_of_text|>) is added by the stage. Assistant turns, with their <|eot_id|>, are trained.
-- `format: chat, chat_template: llama-3` does the same in C.
local chat = require "chat_common"

function format(record, ctx)
  local segments = {}
  for _, m in ipairs(chat.messages(record)) do
    local asst = m.role == "assistant"
    segments[#segments + 1] = { text = "<|start_header_id|>" .. m.role .. "<|end_header_id|>\n\n", train = false }
    segments[#segments + 1] = { text = chat.strip(m.content) .. "<|eot_id|>", train = asst }
  end
  return { segments = segments }
end
