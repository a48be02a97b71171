"""`resgraph run`'s stdout: the table or JSON Lines, a batch of Results at a time (docs/inference.md)."""
from __future__ import annotations

import json


class RunLines:
    """run's stdout, a batch at a time: the table (its header with the first batch's rows) or JSON Lines.

    A model with one vector output, run without --save/--save-masks, prints one row per input, its
    top-k classes (and JSON {"input", "ok", "top"}); every other model one row per input and output
    (the output's top-k where it is a vector, else its shape and the files saved), and JSON with
    "outputs": {name: {"shape", "file", "mask", "top"}} ("top" also at the top level for one vector)."""

    def __init__(self, items, plans, top_k, as_json, writer):
        from ..render import escape
        self.plans, self.as_json, self.writer = plans, as_json, writer
        self.k = {p.name: min(top_k, p.shape[0]) for p in plans if p.vector}
        self.width = min(max(len(escape(i.name)) for i in items), 60)
        self.owidth = max(len("output"), *(len(p.name) for p in plans))
        first = plans[0]
        self.header = [] if as_json else [
            f"{'input':<{self.width}}  top-{self.k[first.name]} (softmax score)" if writer is None else
            f"{'input':<{self.width}}  {'output':<{self.owidth}}  result"]

    def batch(self, batch, start: int) -> list[str]:
        import numpy as np

        from ..runtime import top_k_batch
        tops = {}
        good = [r for r in batch if r.ok]
        for p in (p for p in self.plans if p.vector and good):
            tops[p.name] = iter(top_k_batch(np.stack([r.outputs[p.name] for r in good]), self.k[p.name], p.labels))
        lines, self.header = self.header, []
        for i, r in enumerate(batch):
            if not r.ok:
                lines.append(self._failed(r))
            elif self.writer is None:
                lines.append(self._classic(r, next(tops[self.plans[0].name])))
            else:
                lines.extend(self._rows(r, self.writer.write(start + i, r), {n: next(t) for n, t in tops.items()}))
        return lines

    def _failed(self, r) -> str:
        from ..render import escape
        if self.as_json:
            return json.dumps({"input": r.item.name, "ok": False, "error": r.error}, ensure_ascii=False)
        return f"{escape(r.item.name):<{self.width}}  error: {escape(r.error)}"

    def _classic(self, r, top) -> str:
        from ..render import escape
        if self.as_json:
            return json.dumps({"input": r.item.name, "ok": True, "top": top}, ensure_ascii=False)
        return f"{escape(r.item.name):<{self.width}}  " + "  ".join(f"{escape(t['label'])} ({t['score']:.3f})" for t in top)

    def _rows(self, r, saved: dict, tops: dict) -> list[str]:
        from ..render import escape
        for name, top in tops.items():
            saved[name]["top"] = top
        if self.as_json:
            d = {"input": r.item.name, "ok": True}
            if len(self.plans) == 1 and self.plans[0].vector:
                d["top"] = tops[self.plans[0].name]
            return [json.dumps({**d, "outputs": saved}, ensure_ascii=False)]
        rows = []
        for p in self.plans:
            s = saved[p.name]
            cells = ["  ".join(f"{escape(t['label'])} ({t['score']:.3f})" for t in s["top"])] if "top" in s else \
                [f"[{', '.join(map(str, s['shape']))}]"]
            if "file" in s:
                cells.append(f"-> {escape(s['file'])}")
            if "mask" in s:
                cells.append(f"mask {escape(s['mask']['file'])} ({s['mask']['shape'][1]}x{s['mask']['shape'][0]})")
            rows.append(f"{escape(r.item.name):<{self.width}}  {p.name:<{self.owidth}}  {'  '.join(cells)}")
        return rows
