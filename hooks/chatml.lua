-- chatml.lua: the ChatML template as a format hook (format: lua, format_hook: hooks/chatml.lua).
-- Each turn is <|im_start|>role\n content <|im_end|>\n, the content untrimmed (as ChatML
-- templates do); assistant content with its <|im_end|> is trained. `format: chat, chat_template: chatml` does the same in C.
local chat = require "chat_common"

function format(record, ctx)
  local segments = {}
  for _, m in ipairs(chat.messages(record)) do
    segments[#segments + 1] = { text = "<|im_start|>" .. m.role .. "\n", train = false }
    segments[#segments + 1] = { text = m.content .. "<|im_end|>", train = m.role == "assistant" } -- not trimmed
    segments[#segments + 1] = { text = "\n", train = false }
  end
  return { segments = segments }
end
