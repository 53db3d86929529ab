"""`edgecompile generate DIR --prompt ...`: stream a decoder bundle's continuation to stdout."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


@click.command()
@click.argument("bundle_dir", type=click.Path())
@click.option("--prompt", required=True, help="Prompt text (tokenized as is, no chat template; see --chat).")
@click.option("--chat", is_flag=True, help="Send the prompt as one user message through the model's chat template.")
@click.option("--system", help="With --chat: a system message before the user message.")
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--sample", "do_sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=1), help="Sample from the k most likely tokens.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), help="Nucleus sampling mass.")
@click.option("--seed", type=int, help="Sampling seed (reproducible output).")
@click.option("--num-beams", type=click.IntRange(min=1), default=1, show_default=True,
              help="Beam search width (the text is printed when the search ends).")
@click.option("--length-penalty", type=float, default=1.0, show_default=True)
@click.option("--stop", multiple=True, help="Stop when this string is produced (repeatable; not printed).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads.")
@json_option
def generate(bundle_dir, prompt, chat, system, max_new_tokens, do_sample, temperature, top_k, top_p, seed,
             num_beams, length_penalty, stop, threads, json_mode):
    """Generate text with a decoder bundle, printing tokens as they are produced."""
    import time

    from edgecompile.errors import ConfigError
    from edgecompile.runtime import load

    if system and not chat:
        raise ConfigError("--system needs --chat", hint="add --chat to format the prompt with the chat template")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    kw = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "top_k": top_k,
          "top_p": top_p, "seed": seed, "num_beams": num_beams, "length_penalty": length_penalty, "stop": list(stop)}
    with load(bundle_dir, threads=threads) as runner:
        t0 = time.perf_counter()
        pieces = []
        for piece in runner.stream(messages if chat else prompt, **kw):
            pieces.append(piece)
            if not json_mode:
                click.echo(piece, nl=False)
        seconds = time.perf_counter() - t0
        timings = runner.frontend.timings
    if json_mode:
        emit_json({"text": "".join(pieces), "prompt_tokens": timings.get("prompt_tokens"),
                   "new_tokens": timings.get("new_tokens", 0),
                   "prefill_ms": timings.get("prefill_ms"), "seconds": seconds})
    else:
        click.echo()
