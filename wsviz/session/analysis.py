"""The workspace's analysis job: tensors -> the tidy tables and per-layer views the
dashboards draw (:func:`wsviz.analysis.analyze`, task vectors, matrices down-sampled for
images). Tensors become numpy / pandas here, so views never see torch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wsviz.session.views import LayerDetailView, Progress

#: Largest matrix side sent to the matrix image (bigger ones are strided down first;
#: datashader then rasterises to screen resolution).
MAX_IMAGE_SIDE = 2048


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()




class AnalysisMixin:
    """Analysis methods of :class:`~wsviz.session.ApiWorkspace` (uses ``self.ms``,
    ``self.device``, ``self._lock``, ``self._analysis``, ``self._taskmaps``, ``self._groups``)."""

    # -- analysis ---------------------------------------------------------------------------
    def layers(self) -> list[str]:
        return list(self.ms.names)

    def layer_groups(self) -> dict[str, str]:
        if self._groups is None:
            self._groups = {n: self.ms.layer(n).group for n in self.ms.names}
        return self._groups

    def analysis_run(self):
        """The progressive :class:`wsviz.analysis.AnalysisRun` (started once, disk-cached)."""
        with self._lock:
            if self._run is None:
                from wsviz.analysis import AnalysisRun

                self._run = AnalysisRun(self.ms, device=self.device).start()
            return self._run

    def analysis(self, progress: Progress | None = None):
        """The :class:`wsviz.analysis.AnalysisResult` (waits for :meth:`analysis_run`,
        without holding the workspace lock)."""
        if self._analysis is None:
            run = self.analysis_run()
            if progress:
                run.subscribe(lambda e: progress(e.done / max(1, e.total),
                                                 f"{e.done}/{e.total} {e.stage} {e.name}"))
            self._analysis = run.result()
        return self._analysis

    def analysis_table(self, progress: Progress | None = None) -> pd.DataFrame:
        return self.analysis(progress).table

    def detail(self, layer: str) -> LayerDetailView:
        d = (self._analysis or self.analysis_run()).detail(layer)
        notes = {}
        text = "; ".join(d.notes)
        view = LayerDetailView(layer=layer, shape=tuple(d.shape), notes=notes)
        if d.sv:
            rows = []
            for key, sv in d.sv.items():
                s = _np(sv)
                series = key if key.startswith(("base", "delta:")) else f"ft:{key}"
                rows.append(pd.DataFrame({"series": series, "index": np.arange(len(s)),
                                          "sigma": s}))
            view.spectra = pd.concat(rows, ignore_index=True)
            esd_rows, fit_rows = [], []
            for key in d.sv:
                series = key if key.startswith(("base", "delta:")) else f"ft:{key}"
                esd_rows.append(pd.DataFrame({"series": series, "lam": _np(d.esd(key))}))
                fit = d.fits.get(key)
                if fit is not None:
                    fit_rows.append({"series": series, "alpha": float(fit.alpha),
                                     "xmin": float(fit.xmin)})
            view.esd = pd.concat(esd_rows, ignore_index=True)
            view.esd_fit = pd.DataFrame(fit_rows, columns=["series", "alpha", "xmin"])
        else:
            notes["spectra"] = notes["esd"] = text or "no spectra for this tensor"
        if d.delta_hist is not None and d.delta_hist_edges is not None:
            edges = _np(d.delta_hist_edges)
            counts = d.delta_hist.cpu().numpy()
            view.delta_hist = pd.concat([
                pd.DataFrame({"series": lab, "left": edges[:-1], "right": edges[1:],
                              "count": counts[i]}) for i, lab in enumerate(d.labels)],
                ignore_index=True)
        if d.conflict_map is not None:
            view.sign_conflict = _np(d.conflict_map)
        if d.sign_agreement is not None:
            view.agreement = pd.DataFrame(_np(d.sign_agreement), index=d.labels,
                                          columns=d.labels)
        if d.intruders:
            recs = []
            for lab, intr in d.intruders.items():
                mc = _np(intr.max_cos)
                flag = intr.is_intruder.cpu().numpy()
                sv = _np(intr.sv)
                for r in np.nonzero(flag)[0]:
                    recs.append({"model": lab, "rank": int(r), "sigma": float(sv[r]),
                                 "max_cos": float(mc[r])})
            view.intruders = pd.DataFrame(recs, columns=["model", "rank", "sigma", "max_cos"])
        else:
            notes["intruders"] = "Intruder dimensions are defined for 2-D weights only."
        view.matrix = self._matrices(layer)
        if not view.matrix:
            notes["matrix"] = "1-D tensor: no matrix view."
        if text:
            notes.setdefault("sign_conflict", text)
        return view

    def _matrices(self, layer: str) -> dict[str, np.ndarray]:
        info = self.ms.info(layer)
        if len(info.shape) < 2:
            return {}

        def as2d(t):
            t = t.reshape(t.shape[0], -1)
            sr = max(1, -(-t.shape[0] // MAX_IMAGE_SIDE))
            sc = max(1, -(-t.shape[1] // MAX_IMAGE_SIDE))
            return _np(t[::sr, ::sc])

        out = {"base": as2d(self.ms.get_base(layer))}
        deltas = self.ms.deltas(layer)
        for i, lab in enumerate(self.labels):
            out[f"delta:{lab}"] = as2d(deltas[i])
        return out

    def task_map(self, group: str | None):
        with self._lock:
            if group not in self._taskmaps:
                from wsviz.analysis import task_vector_matrix

                names = None
                if group is not None:
                    names = [n for n, g in self.layer_groups().items() if g == group]
                self._taskmaps[group] = task_vector_matrix(self.ms, names=names,
                                                           device=self.device)
            tv = self._taskmaps[group]
        return list(tv.labels), _np(tv.matrix)

    def cosine_matrix(self) -> pd.DataFrame:
        res = self.analysis()
        if res.task_vectors is not None:
            return res.task_vectors.cosine_frame()
        self.task_map(None)
        return self._taskmaps[None].cosine_frame()

