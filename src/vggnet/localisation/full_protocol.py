"""Localisation, the full protocol (Appendix A.2, the paper's Tables 9-10).

The localisation net is applied densely (`VGG.dense`: FC layers as convolutions,
stride 32, window = crop) to the whole image at one or several test scales Q.
Each position's box, predicted in its own window, is translated by the window's
offset and scaled back to the original image (`dense_boxes`). The classification
net(s) rank the classes (`vggnet.classification.evaluate.evaluate`: any method, scales and
fusion of `vgg eval`); for each of the top-5 classes, that class's boxes from
every position, scale and localisation net (several nets: the union of their
boxes, §A.1) are merged greedily, and the best merged box per class gives five
(class, box) predictions. An image is correct when one of its five has the right
class and IoU >= 0.5 with a ground-truth box.

The greedy merge (OverFeat, Sermanet et al. 2014, §4.3), defined precisely here:
    repeat: among the boxes of one class, take the pair with the largest IoU;
            if that IoU < merge_iou, stop; otherwise replace the pair by one box,
            the mean of all window boxes merged into either (a count-weighted
            average of the pair), whose score is the sum of their scores.
A window's score is the classifier's softmax probability of the class at that
window (the class-score map of `VGG.dense` at the same Q, averaged over the
classification nets), so a merged box is scored by the summed class scores of
the windows that contributed to it. OverFeat's own `match_score` (centre
distance plus intersection area) has no threshold that is scale-free; IoU is.

Two reference rows make the merge earn its place:
- "NMS": `torchvision.ops.batched_nms` at the same IoU; each kept box is scored
  by the summed scores of the windows it suppressed (their cluster), so the rows
  differ only in how a cluster's box is made (the top window vs the average);
- "best window": the single window with the highest class score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.ops import batched_nms, box_iou

from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.localisation.task import (IOU_THRESHOLD, Localiser, gt_boxes, load_classifier_checkpoint, params_to_boxes,
                             sanitize_boxes)
from vggnet.progress import progress_bar

__all__ = ["STRIDE", "MERGE_METHODS", "per_net_scales", "scales_label", "dense_boxes", "greedy_merge", "nms_clusters", "best_window",
           "best_per_class", "top5_localisation_error", "localise_images", "FullResult"]

STRIDE = 32  # the net downsamples by 32: dense positions are 32 pixels apart
MERGE_METHODS = ("merge", "nms", "best-window")
MERGE_LABELS = {"merge": "greedy merge", "nms": "NMS (cluster score)", "best-window": "best window"}


# --------------------------------------------------------------------------- test scales per net


def per_net_scales(scales: Sequence[int] | Sequence[Sequence[int]] | None, defaults: Sequence[int]
                   ) -> list[list[int]]:
    """Each localisation net's test scales Q, in the order of the nets.

    `scales` is one list for every net (`--test-scales 256,384`), or one list per net
    (`--test-scales` repeated once per `--checkpoint`, in the same order: the paper's
    fusion tests its S = 256 net at Q = 256 and its S = 384 net at Q = 352, 384);
    None gives each net its own default Q (`defaults`, one per net)."""
    n = len(defaults)
    if scales is None or len(scales) == 0:
        return [[int(q)] for q in defaults]
    if all(isinstance(q, int) for q in scales):
        return [sorted({int(q) for q in scales})] * n  # type: ignore[arg-type]
    lists = [sorted({int(q) for q in qs}) for qs in scales]  # type: ignore[union-attr]
    if len(lists) == 1:
        return lists * n
    if len(lists) != n:
        raise UserError(f"--test-scales: given {len(lists)} times for {n} localisation nets (--checkpoint); give it "
                        f"once (every net at the same Q) or once per --checkpoint, in the same order")
    return lists


def scales_label(per_net: Sequence[Sequence[int]]) -> str:
    """`256,384` when every net runs at the same Q, else each net's Q joined by ` / ` (`256 / 352,384`)."""
    texts = [",".join(map(str, qs)) for qs in per_net]
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


# --------------------------------------------------------------------------- dense boxes


@torch.no_grad()
def dense_boxes(model: Any, x: torch.Tensor, *, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Boxes of every dense position: `(N, h, w, K, 4)` XYXY, K = 1 (SCR) or classes (PCR).

    `x` (N, 3, H, W) is the normalised image rescaled to Q. The box at position
    (i, j) is predicted in the window whose top-left corner is (32 j, 32 i); it is
    translated by that offset and, with `image_size` = (height, width) of the
    original image, scaled back to it (else left in the pixels of `x`)."""
    crop = int(model.crop_size)
    out = model.dense(x).float()                                   # (N, 4K, h, w)
    n, k4, h, w = out.shape
    params = out.permute(0, 2, 3, 1).reshape(n, h, w, k4 // 4, 4)  # (N, h, w, K, 4)
    boxes = params_to_boxes(params, crop)
    oy = torch.arange(h, dtype=torch.float32, device=boxes.device) * STRIDE
    ox = torch.arange(w, dtype=torch.float32, device=boxes.device) * STRIDE
    offset = torch.stack(torch.broadcast_tensors(ox.view(1, w), oy.view(h, 1), ox.view(1, w), oy.view(h, 1)), -1)
    boxes = boxes + offset.view(1, h, w, 1, 4)
    if image_size is not None:
        sy, sx = image_size[0] / x.shape[-2], image_size[1] / x.shape[-1]
        boxes = boxes * torch.tensor([sx, sy, sx, sy], device=boxes.device)
    return boxes


# --------------------------------------------------------------------------- merging


def _offset_by_class(boxes: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor:
    # batched_nms's trick: boxes of different classes are moved apart so they never overlap
    # (in float64, with the classes renumbered 0..k-1, so the shift costs no precision)
    if boxes.numel() == 0:
        return boxes.double()
    boxes = boxes.double()
    compact = torch.unique(idxs, return_inverse=True)[1]
    span = float(boxes.max() - boxes.min()) + 1.0
    return boxes - boxes.min() + compact.to(boxes.dtype).view(-1, 1) * span


_GONE = -1e30  # a merged-away box is parked here: zero area, IoU 0 with everything (and 0 < merge_iou)


def _rows(b: torch.Tensor, area: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """IoU of boxes `ks` with every box `(len(ks), n)`, each box with itself at -1.

    `torchvision.ops.box_iou`'s arithmetic, inlined with the areas kept up to date:
    this runs once per merge, where its call overhead would dominate."""
    bk = b[ks]
    lt = torch.maximum(bk[:, None, :2], b[None, :, :2])
    wh = (torch.minimum(bk[:, None, 2:], b[None, :, 2:]) - lt).clamp_(min=0)
    inter = wh[..., 0] * wh[..., 1]
    r = inter / (area[ks, None] + area[None, :] - inter).clamp_(min=1e-12)
    r[torch.arange(ks.numel()), ks] = -1.0
    return r


def greedy_merge(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, merge_iou: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """OverFeat's greedy merge, per class (`idxs`), as defined in the module docstring.

    Returns (boxes (M, 4), summed scores (M,), classes (M,), windows merged (M,)).

    Vectorised, with a lazy priority: `best[k]` caches the largest IoU of box k with
    another box of its class and `partner[k]` which one. Each round merges the closest
    pair of every class at once (classes are independent, so this is the sequential
    definition run for all classes side by side): the merged box's row is recomputed,
    and every row for which it is now the best takes it, in one tensor step. Rows
    whose cached partner changed or died keep a stale value that is still an upper
    bound of their true best; when such a row comes out on top it is recomputed
    instead of merged. No Python loop over pairs; the result equals the pairwise
    definition's (tests/test_localize.py checks it on random sets)."""
    if not 0.0 < merge_iou <= 1.0:
        raise ValueError(f"merge_iou must be in (0, 1], got {merge_iou}")
    n = boxes.shape[0]
    if n == 0:
        return boxes.new_zeros(0, 4), scores.new_zeros(0), idxs.new_zeros(0), idxs.new_zeros(0)
    boxes, scores, idxs = boxes.cpu(), scores.cpu(), idxs.cpu()
    b = _offset_by_class(boxes, idxs)                              # classes moved apart: IoU 0 across classes
    shift = b[:, :1] - boxes[:, :1].double()                       # per-box shift (the same for x and y)
    cls = torch.unique(idxs, return_inverse=True)[1]
    n_cls = int(cls.max()) + 1
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    s = scores.double().clone()
    count = torch.ones(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    version = torch.zeros(n, dtype=torch.long)                     # bumped when a box changes
    best = torch.empty(n, dtype=torch.float64)
    partner = torch.empty(n, dtype=torch.long)
    everyone = torch.arange(n)
    for start in range(0, n, 512):                                 # all rows, in chunks of (512, n)
        best[start:start + 512], partner[start:start + 512] = _rows(b, area, everyone[start:start + 512]).max(1)
    seen = version[partner].clone()                                # the partner's version when cached
    while True:
        if n_cls == 1:
            v, k = best.max(0)
            if float(v) < merge_iou:
                break
            ks = k.view(1)
        else:  # the top row of every class that still has a pair at IoU >= merge_iou
            top = torch.full((n_cls,), -2.0, dtype=torch.float64).scatter_reduce(0, cls, best, "amax")
            hit = (best == top[cls]) & (top[cls] >= merge_iou)
            if not bool(hit.any()):
                break
            first = torch.full((n_cls,), n, dtype=torch.long).scatter_reduce(0, cls[hit], everyone[hit], "amin")
            ks = first[first < n]
        ps = partner[ks]
        fresh = alive[ps] & (version[ps] == seen[ks])
        if not bool(fresh.all()):                                  # stale rows: recompute them instead of merging
            stale = ks[~fresh]
            best[stale], partner[stale] = _rows(b, area, stale).max(1)
            seen[stale] = version[partner[stale]]
            ks, ps = ks[fresh], ps[fresh]
            if not ks.numel():
                continue
        i, j = torch.minimum(ks, ps), torch.maximum(ks, ps)        # keep the earlier box, as the definition does
        ci, cj = count[i].unsqueeze(1), count[j].unsqueeze(1)
        b[i] = (b[i] * ci + b[j] * cj) / (ci + cj)                 # the mean of every window merged into either
        area[i] = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
        count[i] += count[j]
        s[i] += s[j]
        alive[j] = False
        b[j] = _GONE
        area[j] = 0.0
        best[j] = -1.0
        version[i] += 1
        r = _rows(b, area, i)                                      # (merges, n)
        best[i], partner[i] = r.max(1)
        seen[i] = version[partner[i]]
        col, which = r.max(0)                                      # each row's IoU with its class's new box
        better = col > best
        best[better] = col[better]
        partner[better] = i[which[better]]
        seen[better] = version[i][which[better]]
    keep = alive.nonzero().flatten()
    merged = b[keep] - shift[keep]
    return merged.to(boxes.dtype), s[keep].to(scores.dtype), idxs[keep], count[keep].long()


def nms_clusters(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batched_nms`, each kept box scored by the summed scores of its cluster (itself and
    the windows it suppressed: those of its class with IoU > `iou` whose first such kept
    box, in score order, it is). Returns (boxes, cluster scores, classes)."""
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, 4), scores.new_zeros(0), idxs.new_zeros(0)
    keep = batched_nms(boxes.float(), scores.float(), idxs, iou)   # decreasing score
    b = _offset_by_class(boxes, idxs)
    overlaps = box_iou(b, b[keep]) > iou                           # (n, kept)
    overlaps[keep, torch.arange(keep.numel(), device=b.device)] = True
    owner = overlaps.float().argmax(dim=1)                         # the first kept box that claims each window
    cluster = torch.zeros(keep.numel(), dtype=torch.float32, device=b.device).index_add_(0, owner, scores.float())
    return boxes[keep], cluster, idxs[keep]


def best_window(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every window as a candidate with its own score (the best per class is then the single best window)."""
    return boxes, scores, idxs


def best_per_class(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, classes: Sequence[int]
                   ) -> list[tuple[int, list[float], float]]:
    """The highest-scoring box of each class in `classes` (in that order): [(class, box, score)]."""
    out = []
    for c in classes:
        mask = idxs == c
        if not bool(mask.any()):
            continue
        k = int(torch.where(mask, scores, torch.full_like(scores, -math.inf)).argmax())
        out.append((int(c), [float(v) for v in boxes[k]], float(scores[k])))
    return out


def top5_localisation_error(predictions: Sequence[Sequence[tuple[int, Sequence[float]]]], labels: Sequence[int],
                            gt_boxes: Sequence[torch.Tensor]) -> float:
    """Percent of images none of whose (class, box) predictions has the right class
    and IoU >= 0.5 with one of its ground-truth boxes."""
    if not labels:
        raise ValueError("top5_localisation_error: no images")
    wrong = 0
    for preds, label, gt in zip(predictions, labels, gt_boxes):
        ok = False
        for c, box in preds:
            if int(c) == int(label) and gt.numel() and \
                    float(box_iou(torch.tensor([list(box)], dtype=torch.float32), gt).max()) >= IOU_THRESHOLD:
                ok = True
                break
        wrong += not ok
    return 100.0 * wrong / len(labels)


# --------------------------------------------------------------------------- the full protocol


class ImageFiles(Dataset):
    """Image files as a `vggnet.data`-like dataset (label 0), so that `evaluate` ranks their classes."""

    def __init__(self, paths: Sequence[str], classes: Sequence[str], transform: Any = None) -> None:
        self.samples = [(str(p), 0) for p in paths]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        from vggnet.data.images import load_image

        img = load_image(self.samples[i][0])
        out = self.transform(img) if self.transform else img
        return (out[0], 0, out[1]) if isinstance(out, tuple) else (out, 0)


class _MultiScale:
    """Dataset transform: the image decoded once and rescaled to every Q (RGB in [0, 1]),
    with its ground-truth boxes (if any) in the decoded image's pixels."""

    def __init__(self, scales: Sequence[int]) -> None:
        from vggnet.data.transforms import DenseEvalPreset
        from vggnet.inference import identity_preprocessing

        self.scales = sorted(set(int(q) for q in scales))
        self.decode_side = self.scales[-1]
        self.presets = [DenseEvalPreset(scale=q, preprocessing=identity_preprocessing()) for q in self.scales]

    def __call__(self, image: Any, boxes: tv_tensors.BoundingBoxes | None = None) -> Any:
        from torchvision.transforms.v2 import functional as TF

        from vggnet.data.images import ensure_decoded
        from vggnet.data.transforms import size_hw

        where = str(getattr(image, "filename", "") or "an image")
        image = ensure_decoded(image, self.decode_side)  # a Pillow image, or a uint8 tensor from TorchCodec
        h, w = size_hw(image)
        xs = [p(image) for p in self.presets]
        if boxes is None:
            return xs, tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w))
        boxes = sanitize_boxes(boxes, where)
        if tuple(boxes.canvas_size) != (h, w):
            boxes = TF.resize(boxes, [h, w])   # annotated on the full-size image; draft decoding made it smaller
        return xs, boxes


def _identity(x: Any) -> Any:
    return x


@dataclass
class FullResult:
    """Per-image top-5 (class, box, score) of each method, with labels and ground truth."""

    classes: list[str]
    paths: list[str]
    labels: list[int]
    gt_boxes: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    predictions: dict[str, list[list[tuple[int, list[float], float]]]]
    classification_top5_error: float | None = None
    seconds: float = 0.0
    windows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, method: str = "merge") -> float:
        preds = [[(c, b) for c, b, _ in p] for p in self.predictions[method]]
        return top5_localisation_error(preds, self.labels, self.gt_boxes)


def _classifier_scores(classifiers: Sequence[Any], x01: torch.Tensor, classes: torch.Tensor,
                       size: tuple[int, int]) -> torch.Tensor:
    """(h, w, k): the classifiers' softmax probability of each class in `classes` at each
    window of the localisation map of size `size`, averaged over the classifiers."""
    maps = []
    for net in classifiers:
        m = net.model.dense(net.normalize(x01)).float().softmax(dim=1)[:, classes]   # (1, k, h', w')
        if tuple(m.shape[-2:]) != tuple(size):  # another crop size: align the maps by nearest window
            m = F.interpolate(m, size=size, mode="nearest")
        maps.append(m[0])
    return torch.stack(maps).mean(0).permute(1, 2, 0)               # (h, w, k)


@torch.no_grad()
def _candidates(locs: Sequence[Localiser], classifiers: Sequence[Any], xs: Sequence[torch.Tensor],
                size: tuple[int, int], classes: torch.Tensor, device: torch.device, *,
                scales: Sequence[int], per_net: Sequence[Sequence[int]]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every window's box for each class in `classes`, from every localisation net at each
    of its own scales (`per_net[i]`; `xs[k]` is the image at `scales[k]`), the union over
    nets, with its class score: (boxes (M, 4), scores (M,), classes (M,))."""
    all_boxes, all_scores, all_idx = [], [], []
    for q, x01 in zip(scales, xs):
        x01 = x01.unsqueeze(0).to(device)
        for loc, qs in zip(locs, per_net):
            if q not in qs:
                continue
            b = dense_boxes(loc.model, loc.preprocessing.normalize()(x01), image_size=size)[0]   # (h, w, K, 4)
            h, w = b.shape[:2]
            b = b[:, :, classes] if loc.head == "pcr" else b.expand(h, w, classes.numel(), 4)
            s = _classifier_scores(classifiers, x01, classes, (h, w))                      # (h, w, k)
            all_boxes.append(b.reshape(-1, 4))
            all_scores.append(s.reshape(-1))
            all_idx.append(classes.view(1, 1, -1).expand(h, w, -1).reshape(-1))
    return torch.cat(all_boxes).cpu(), torch.cat(all_scores).cpu(), torch.cat(all_idx).cpu()


def predict_boxes(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, ranked: Sequence[int], *,
                  merge_iou: float, nms_iou: float) -> dict[str, list[tuple[int, list[float], float]]]:
    """Five (class, box, score) per method, in the classifier's ranking order."""
    return {"merge": best_per_class(*greedy_merge(boxes, scores, idxs, merge_iou)[:3], ranked),
            "nms": best_per_class(*nms_clusters(boxes, scores, idxs, nms_iou), ranked),
            "best-window": best_per_class(*best_window(boxes, scores, idxs), ranked)}


def localise_images(locs: Sequence[Localiser], classifiers: Sequence[str], dataset: Any, *,
                    scales: Sequence[int] | Sequence[Sequence[int]],
                    cls_scales: Sequence[int] | None = None, cls_method: str = "dense", flip: bool = True,
                    merge_iou: float = 0.5, nms_iou: float = 0.5, topk: int = 5, device: torch.device,
                    workers: int = 0, batch_size: int = 32, progress: bool = False, amp: str = "off",
                    channels_last: bool = False) -> FullResult:
    """The full protocol on a `vggnet.data` dataset (built with boxes for evaluation, or
    `ImageFiles` for prediction): class ranking by the fused classifiers, dense boxes, merge.
    `amp` ("bf16", "fp16" or "off") and `channels_last` as resolved by `vggnet.execution`."""
    import time

    from vggnet.inference import amp_context, load_nets, sample_paths, with_transform
    from vggnet.classification.evaluate import evaluate

    t0 = time.perf_counter()
    classes = locs[0].classes
    for loc in locs[1:]:
        if loc.classes != classes:
            raise UserError(f"--checkpoint {loc.checkpoint}: its classes differ from {locs[0].checkpoint}'s")
    ckpts = [load_classifier_checkpoint(c) for c in classifiers]
    for path, ck in zip(classifiers, ckpts):
        if list(ck.get("classes", [])) != list(classes):
            raise CheckpointError(f"--classifier {path}: its {len(ck.get('classes', []))} classes differ from the "
                                  f"localisation net's {len(classes)} ({', '.join(classes[:4])}, ...)")
    per_net = per_net_scales(scales, [loc.default_scale() for loc in locs])
    union = sorted({q for qs in per_net for q in qs})
    for loc, qs in zip(locs, per_net):
        if min(qs) < loc.crop_size:
            raise UserError(f"--test-scales: Q={min(qs)} is smaller than localisation net {loc.checkpoint}'s "
                            f"crop size {loc.crop_size}")
    ranking = evaluate(list(ckpts), dataset, scales=cls_scales or union, method=cls_method, flip=flip,
                       batch_size=batch_size, workers=workers, device=device, amp=amp, channels_last=channels_last)
    posterior = ranking.final_posterior()                              # (N, classes), fused
    k = min(topk, len(classes))
    ranked = posterior.topk(k, dim=1).indices
    nets = load_nets(ckpts, preprocessing=None, device=device, channels_last=channels_last,
                     use="--classifier")
    for loc in locs:
        loc.model.eval().to(device)
    multi = _MultiScale(union)
    ds = with_transform(dataset, multi)
    paths = sample_paths(ds)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity)
    preds: dict[str, list] = {m: [] for m in MERGE_METHODS}
    labels, gts, sizes, windows = [], [], [], 0
    iterator: Iterable = progress_bar(loader, total=len(ds), desc="full protocol", enabled=progress)
    for n, item in enumerate(iterator):
        if item is None:
            raise DataError(f"{paths[n]}: cannot be read (evaluation needs every image)")
        xs, label, boxes = item if len(item) == 3 else (*item, None)
        size = tuple(boxes.canvas_size) if boxes is not None else (int(xs[0].shape[-2]), int(xs[0].shape[-1]))
        with amp_context(device, amp):
            cand = _candidates(locs, nets, xs, size, ranked[n], device, scales=multi.scales, per_net=per_net)
        cand = tuple(c.float() if c.is_floating_point() else c for c in cand)
        windows += cand[0].shape[0]
        for m, p in predict_boxes(*cand, ranked[n].tolist(), merge_iou=merge_iou, nms_iou=nms_iou).items():
            preds[m].append(p)
        labels.append(int(label))
        gts.append(gt_boxes(boxes) if boxes is not None else torch.zeros(0, 4))
        sizes.append(size)
    cls_err = None
    if getattr(dataset, "has_boxes", True) and not isinstance(dataset, ImageFiles):
        cls_err = 100.0 * (1 - float((ranked == ranking.labels.view(-1, 1)).any(dim=1).float().mean()))
    return FullResult(classes=list(classes), paths=paths, labels=labels, gt_boxes=gts,
                      sizes=sizes, predictions=preds, classification_top5_error=cls_err,
                      seconds=time.perf_counter() - t0, windows=windows, extra={"test_scales": per_net})
