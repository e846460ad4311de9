#!/usr/bin/env python3
"""render_goldens.py: the corpus through transformers' own chat-template renderer (jinja2).

    python3 render_goldens.py CORPUS.jsonl OUT_DIR NAME=MODEL_DIR ... [--spans NAME=TEMPLATE.jinja]

For each model directory (only its tokenizer_config.json is read: the template and the special
tokens) writes OUT_DIR/NAME.jsonl: one line per corpus record, the JSON string that
apply_chat_template(messages, tools=..., documents=..., add_generation_prompt=..., **kwargs,
tokenize=False) returns, or null when the template rejects the record. It calls
transformers.utils.chat_template_utils.render_jinja_template, the function apply_chat_template
renders with, with the special tokens as apply_chat_template passes them. Run where transformers
is installed (the GPU machine); tests/test_chat_template_js.sh compares our output with the
files it writes (tests/chat_template/golden/). --spans renders a template with {% generation %}
blocks with return_assistant_tokens_mask=True and writes NAME.spans.jsonl: per record
{"text": ..., "spans": [[start, end], ...]} in characters, the generation indices transformers
turns into the assistant mask. With --plain-jinja2 (for development without
transformers) it builds the same sandboxed environment from jinja2 directly, and says so in
OUT_DIR/SOURCE.
"""
import json
import sys


def specials(cfg):
    out = {}
    for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = cfg.get(k)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[k] = v
    return out


def plain_renderer(template):
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    import jinja2.ext
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
    t = env.from_string(template)

    def render(messages, tools, documents, add_generation_prompt, **kw):
        return t.render(messages=messages, tools=tools, documents=documents,
                        add_generation_prompt=add_generation_prompt, **kw)
    return render


def transformers_renderer(template):
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(messages, tools, documents, add_generation_prompt, **kw):
        texts, _ = render_jinja_template(conversations=[messages], tools=tools, documents=documents,
                                         chat_template=template, add_generation_prompt=add_generation_prompt, **kw)
        return texts[0]
    return render


def main():
    args = sys.argv[1:]
    plain = "--plain-jinja2" in args
    args = [a for a in args if a != "--plain-jinja2"]
    spans = [args[i + 1] for i, a in enumerate(args) if a == "--spans"]
    args = [a for i, a in enumerate(args) if a != "--spans" and (i == 0 or args[i - 1] != "--spans")]
    corpus_path, out_dir, models = args[0], args[1], args[2:]
    records = [json.loads(l) for l in open(corpus_path, encoding="utf-8") if l.strip()]
    if plain:
        import jinja2
        source = f"jinja2 {jinja2.__version__} (plain environment, not transformers)"
    else:
        import jinja2
        import transformers
        source = f"transformers {transformers.__version__} render_jinja_template, jinja2 {jinja2.__version__}"
    with open(f"{out_dir}/SOURCE", "w") as f:
        f.write(source + "\n")
    for spec in models:
        name, d = spec.split("=", 1)
        cfg = json.load(open(f"{d}/tokenizer_config.json", encoding="utf-8"))
        render = (plain_renderer if plain else transformers_renderer)(cfg["chat_template"])
        sp = specials(cfg)
        lines = []
        rejected = 0
        for rec in records:
            kw = dict(sp)
            kw.update(rec.get("chat_template_kwargs") or {})
            try:
                text = render(rec["messages"], rec.get("tools"), rec.get("documents"),
                              bool(rec.get("add_generation_prompt")), **kw)
                lines.append(json.dumps(text, ensure_ascii=False))
            except Exception as e:  # the template rejected the record (raise_exception)
                lines.append("null")
                rejected += 1
        with open(f"{out_dir}/{name}.jsonl", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"{name}: {len(records)} records, {rejected} rejected", flush=True)
    for spec in spans:
        from transformers.utils.chat_template_utils import render_jinja_template
        name, path = spec.split("=", 1)
        template = open(path, encoding="utf-8").read()
        lines = []
        for rec in records:
            msgs = [m for m in rec["messages"] if isinstance(m.get("content"), str)]
            texts, gen = render_jinja_template(conversations=[msgs], tools=None, documents=None, chat_template=template,
                                               return_assistant_tokens_mask=True,
                                               add_generation_prompt=bool(rec.get("add_generation_prompt")))
            lines.append(json.dumps({"text": texts[0], "spans": [list(s) for s in gen[0]]}, ensure_ascii=False))
        with open(f"{out_dir}/{name}.spans.jsonl", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"{name}: generation spans of {len(records)} records", flush=True)


if __name__ == "__main__":
    main()
