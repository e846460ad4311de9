// make_corpus.mjs: writes tests/chat_template/corpus.jsonl, the conversations every chat
// template is rendered over (by us, by @huggingface/jinja in CI, by transformers' jinja2 on the
// GPU machine). Deterministic (a fixed-seed generator), so rerunning it gives the same file.
//
//   node tests/chat_template/make_corpus.mjs > tests/chat_template/corpus.jsonl
//
// Each record: {"messages": [...], "tools"?: [...], "add_generation_prompt": bool,
// "chat_template_kwargs"?: {...}}. It covers system prompts, one to four turns, tools and tool
// calls (arguments as objects and as JSON text), tool results, thinking (in the content between
// <think> tags and as reasoning_content), empty content, leading and trailing white space,
// multi-line text, Jinja-like text, quotes and backslashes, and non-ASCII text (accents, CJK,
// Arabic, emoji with joiners, a no-break space). Numbers are integers only: JavaScript cannot
// tell 1.0 from 1, Python can, so floats would compare the JSON readers, not the templates.
let seed = 20261204;
function rnd() {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];

const TEXTS = [
  'What is the capital of France?',
  'Paris.',
  '  Leading and trailing spaces  ',
  'Line one\nLine two\n\nLine four',
  '',
  'Café, naïve, façade — déjà vu.',
  '日本語のテキストです。中文也可以。',
  'مرحبا بالعالم',
  'Family: 👨‍👩‍👧‍👦 and flags 🇫🇷, thumbs 👍🏽',
  'A no-break\u00a0space and a tab\there.',
  'Quotes: \'single\' and "double" and a back\\slash.',
  'Looks like Jinja: {{ not_a_tag }} {% if %} {# no #}',
  'Write a haiku about autumn.',
  'Leaves fall in silence\nthe river carries the red\nsummer, gone for good',
  '\n\nStarts with newlines',
  'Ends with a newline\n',
  'Explain recursion in one sentence.',
  'A function that calls itself on a smaller input until a base case stops it.',
  '<tool_response>\nnot really a tool response\n</tool_response>',
  'Math: 2 < 3 && 5 > 4, 10% of 50 is 5.',
];
const SYSTEMS = [
  'You are a helpful assistant.',
  'You are a pirate. Answer like one.',
  '  Be concise.  ',
  'Système : réponds en français.',
  '',
  'Rules:\n1. Be kind.\n2. Be brief.',
];
const THINK = [
  '<think>\nThe user wants a capital. France -> Paris.\n</think>\n\nParis.',
  '<think>\n\n</think>\n\nNo thinking needed.',
  '<think>Short thought.</think>The answer is 42.',
];
const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Get the current weather in a city',
      parameters: {
        type: 'object',
        properties: {
          city: { type: 'string', description: 'The city, e.g. Zürich' },
          unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
        },
        required: ['city'],
      },
    },
  },
  {
    type: 'function',
    function: {
      name: 'search',
      description: 'Search the web',
      parameters: {
        type: 'object',
        properties: {
          query: { type: 'string' },
          max_results: { type: 'integer', description: 'At most this many' },
          filters: { type: 'object', properties: { site: { type: 'string' }, recent: { type: 'boolean' } } },
        },
        required: ['query'],
      },
    },
  },
];

function toolCall(k) {
  if (k % 2 === 0)
    return { type: 'function', function: { name: 'get_weather', arguments: { city: pick(['Paris', 'Zürich', '東京']), unit: 'celsius' } } };
  const args = { query: pick(['llama 3 paper', 'café near me', 'quote "this"']), max_results: 3 + k, filters: { recent: true, site: 'example.org' } };
  // about half the tool calls carry their arguments as JSON text, as OpenAI's API does
  return { type: 'function', function: { name: 'search', arguments: rnd() < 0.5 ? args : JSON.stringify(args) } };
}

function conversation(i) {
  const msgs = [];
  const rec = {};
  if (rnd() < 0.5) msgs.push({ role: 'system', content: pick(SYSTEMS) });
  const withTools = i % 4 === 3;
  const turns = 1 + Math.floor(rnd() * 4);
  for (let t = 0; t < turns; t++) {
    msgs.push({ role: 'user', content: pick(TEXTS) });
    const last = t === turns - 1;
    if (last && rnd() < 0.35) break; // ends on the user's turn
    if (withTools && rnd() < 0.6) {
      const n = 1 + Math.floor(rnd() * 2);
      const calls = [];
      for (let k = 0; k < n; k++) calls.push(toolCall(k + t));
      msgs.push({ role: 'assistant', content: rnd() < 0.5 ? '' : 'Let me check.', tool_calls: calls });
      for (let k = 0; k < n; k++) msgs.push({ role: 'tool', content: pick(['{"temperature": 21, "sky": "clear"}', 'No results.', 'Résultat : 3 pages']) });
    }
    const m = { role: 'assistant', content: rnd() < 0.2 ? pick(THINK) : pick(TEXTS) };
    if (rnd() < 0.1) m.reasoning_content = 'First I recall the facts.\nThen I answer.';
    msgs.push(m);
  }
  rec.messages = msgs;
  if (withTools) rec.tools = rnd() < 0.5 ? TOOLS : [TOOLS[0]];
  rec.add_generation_prompt = i % 2 === 1;
  if (i % 5 === 4) rec.chat_template_kwargs = { enable_thinking: false };
  return rec;
}

const out = [];
for (let i = 0; i < 240; i++) out.push(JSON.stringify(conversation(i)));
process.stdout.write(out.join('\n') + '\n');
