"""``input_guard: escape`` on the python backend: message contents tokenized as text, never as
template tokens. The worker uses it, and the python export carries its source, so the deployed
service tokenizes as the measured one did. Nothing here imports ``llama_cpp``."""

from __future__ import annotations

from typing import Any


class Escape:
    """``input_guard: escape``: every message's content is tokenized with special-token parsing off,
    so no text in it can become a template token; the template's own markers are parsed as usual.

    llama-cpp-python renders the chat template to one string and tokenizes all of it with
    ``special=True``. Each content is therefore fenced with markers no input can hold (a random
    nonce between private-use characters), and the model's ``tokenize`` is wrapped to tokenize what
    lies between them as text, and the rest as before, piece by piece.
    """

    def __init__(self, llm: Any) -> None:
        import secrets

        nonce = secrets.token_hex(8)
        self.open, self.close = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"
        self._tokenize = llm.tokenize
        llm.tokenize = self.tokenize

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{**m, "content": f"{self.open}{m['content']}{self.close}"} for m in messages]

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        rest = text.decode("utf-8", errors="surrogatepass")
        out: list[int] = []
        while rest:
            head, found, tail = rest.partition(self.open)
            content, _, rest = tail.partition(self.close) if found else ("", "", "")
            for piece, parse in ((head, special), (content, False)):
                if piece:
                    out += self._tokenize(piece.encode("utf-8", errors="surrogatepass"),
                                          add_bos=add_bos and not out, special=parse)
        return out or self._tokenize(b"", add_bos=add_bos, special=special)
