"""Tokenizer for decoder bundles, without transformers: the bundle's `tokenizer.json` through the
`tokenizers` library (the same Rust code transformers' fast tokenizers run), and the chat template
from the tokenizer config rendered with jinja2.

A plain prompt is encoded exactly as `AutoTokenizer(prompt)` does (the tokenizer's own post-processor
adds BOS etc.); chat messages are rendered with the template (add_generation_prompt=True) and the
result is encoded without adding special tokens again, as `apply_chat_template(tokenize=True)` does.
"""
from __future__ import annotations

from pathlib import Path

from edgecompile.errors import BundleError, DataError


def read_tokenizer_json(path: str | Path, max_length: int | None = None, *, error=BundleError,
                        hint: str = "rebuild the bundle"):
    """A `tokenizers.Tokenizer` from a tokenizer.json (the one loader of text and decoder bundles and of
    HF sources); with `max_length`, padding off and truncation to it on. Raises `error` (one line, with
    `hint`) when the package is missing or the file unreadable."""
    try:
        from tokenizers import Tokenizer as _Tok
    except ImportError:
        raise error("text and decoder models need the 'tokenizers' package",
                    hint="pip install 'edgecompile[runtime]'") from None
    try:
        tok = _Tok.from_file(str(path))
    except Exception as exc:  # noqa: BLE001  (the Rust side raises plain Exception subclasses)
        raise error(f"{path}: not a readable tokenizer.json ({str(exc).splitlines()[0][:200]})", hint=hint) from None
    if max_length is not None:
        tok.no_padding()
        tok.enable_truncation(max_length)
    return tok


class Tokenizer:
    def __init__(self, tokenizer_json: str | Path, chat_template: str | None = None,
                 special_tokens: dict | None = None):
        self._tok = read_tokenizer_json(tokenizer_json)
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._template = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages) -> str:
        if not self.chat_template:
            raise DataError("this model's tokenizer has no chat template, so chat messages cannot be formatted",
                            hint="pass a plain string prompt instead")
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages) or not messages:
            raise DataError("messages must be a non-empty list of {'role': str, 'content': str} dicts",
                            hint="e.g. [{'role': 'user', 'content': 'Hello'}], or pass a plain string")
        if self._template is None:
            try:
                import jinja2
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                raise BundleError("chat messages need the 'jinja2' package to render the chat template",
                                  hint="pip install 'edgecompile[runtime]' or pass a plain string prompt") from None

            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True,
                                         **self.special_tokens)
        except Exception as exc:  # noqa: BLE001  (template errors of any kind -> one-line DataError)
            raise DataError(f"the chat template rejected the messages: {exc}",
                            hint="check the roles and their order the model expects") from None

    def encode_chat(self, messages) -> list[int]:
        return self.encode(self.render_chat(messages), add_special_tokens=False)
