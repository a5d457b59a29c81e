"""k-NN search of the k-NN OOD score: today's torch search vs faiss (exact flat, approximate IVF).

For banks of 10^4, 10^5 and 10^6 unit vectors (D = 128, the digits box head's FC_DIM) and 800
queries (a test image batch's detections), the k-th neighbour distance (k = 50, the paper's)
is computed by the three searches of ``MODEL.OOD.POST_HOC.KNN.SEARCH``: "torch" (one matrix
product and a top-k, or chunks of the bank where the (800, M) matrix would pass
--max-matrix-mb), "faiss_flat" (exact) and "faiss_ivf" (approximate, NLIST 4 sqrt(M) cells,
NPROBE searched). Timings of one size are interleaved; each faiss index is built once before
(its build time reported apart: it is paid once per loaded model). The IVF index's quality:
recall@k (the share of the exact k nearest rows it returns) and the error of the k-th
distance, against the exact search; at the largest size also a sweep of NPROBE.

The bank is box-feature-like, not uniform on the sphere (where no index beats brute force):
ReLU features of 5 class Gaussians whose spread spans --latent-dim (16) directions of the D,
L2-normalised; half of the queries are drawn from the same classes, half from 5 other ones
(OOD boxes, whose neighbours are farther). The recall of an approximate index depends on
that structure: --latent-dim 0 (isotropic spread) is its worst case.

Target: under 0.1 s per 800 queries at 10^6 bank rows with recall >= 0.99.

    python benchmarks/bench_knn.py [--quick] [--sizes 10000 100000 1000000] [--threads 2]
"""
import math
import time

import torch
from torch.nn import functional as F

import _common as C
from vos_det.modeling.ood_scores.knn_search import build_knn_search, default_nlist, faiss_available

TARGET_SECONDS = 0.1
TARGET_RECALL = 0.99
NPROBE_SWEEP = (8, 16, 32, 64, 128)


def box_like_features(num, centres, mixing, generator):
    """(num, D) L2-normalised ReLU features of class Gaussians N(centre, A A^T).

    Args:
        centres (Tensor): (C, D) class means.
        mixing (Tensor): (D, L) A; L < D gives the features an L-dimensional spread around
            each centre.
    """
    labels = torch.randint(0, len(centres), (num,), generator=generator)
    noise = torch.randn(num, mixing.shape[1], generator=generator) @ mixing.T
    return F.normalize(torch.relu(centres[labels] + noise), dim=1)


def make_bank(size, centres, mixing, generator, block=100_000):
    """The bank, drawn in blocks."""
    return torch.cat([box_like_features(min(block, size - s), centres, mixing, generator) for s in range(0, size, block)])


def recall_at_k(found, exact):
    """Mean share of each query's exact k nearest rows among the rows found, (N, k) each."""
    hits = (found[:, :, None] == exact[:, None, :]).any(dim=2).sum(dim=1)
    return float(hits.float().mean() / exact.shape[1])


def torch_chunk_size(num_queries, size, max_matrix_mb):
    """0 (one product) if the (queries, size) float32 matrix fits max_matrix_mb, else the
    largest chunk that does."""
    rows = int(max_matrix_mb * 2**20 / (4 * num_queries))
    return 0 if rows >= size else rows


def main():
    parser = C.argument_parser("bench_knn", __doc__.splitlines()[0], repeats=5, quick_repeats=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="bank sizes M")
    parser.add_argument("--queries", type=int, default=800, help="queries (detections) per search")
    parser.add_argument("--dim", type=int, default=128, help="feature dimension D (digits FC_DIM)")
    parser.add_argument("--k", type=int, default=50, help="neighbour rank (the paper's 50)")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells searched per query (MODEL.OOD.POST_HOC.KNN.NPROBE)")
    parser.add_argument("--latent-dim", type=int, default=16,
                        help="dimensions of each class's spread (0 = all D: isotropic, the worst case of an index)")
    parser.add_argument("--max-matrix-mb", type=float, default=1024.0,
                        help="largest (queries, M) similarity matrix of the torch search before it chunks")
    args = C.finish_args(parser.parse_args())
    if args.quick:
        args.sizes = [min(size, 20_000) for size in args.sizes[:2]]
    if args.device != "cpu":
        raise SystemExit("bench_knn measures the CPU searches (faiss-cpu); run it with --device cpu")
    if not faiss_available():
        raise SystemExit("bench_knn needs faiss: pip install faiss-cpu")
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    info = C.machine_info("cpu")
    info["faiss"] = faiss.__version__
    info["faiss_threads"] = faiss.omp_get_max_threads()
    C.print_header("bench_knn: k-th neighbour distance, torch vs faiss", info, args)
    print(f"{args.queries} queries, D={args.dim}, k={args.k}, IVF nprobe={args.nprobe}, banks {args.sizes}")

    generator = torch.Generator().manual_seed(args.seed)
    centres = 1.5 * torch.randn(10, args.dim, generator=generator)
    latent = args.latent_dim or args.dim
    mixing = torch.randn(args.dim, latent, generator=generator) / math.sqrt(latent)
    queries = torch.cat([
        box_like_features(args.queries // 2, centres[:5], mixing, generator),
        box_like_features(args.queries - args.queries // 2, centres[5:], mixing, generator),
    ])
    rows, results = [], {}
    for size in args.sizes:
        bank = make_bank(size, centres[:5], mixing, generator)
        chunk = torch_chunk_size(args.queries, size, args.max_matrix_mb)
        searches, build_s = {}, {}
        for name in ("torch", "faiss_flat", "faiss_ivf"):
            start = time.perf_counter()
            searches[name] = build_knn_search(bank, name, chunk_size=chunk, nprobe=args.nprobe, seed=args.seed)
            build_s[name] = time.perf_counter() - start
        times = C.interleaved(
            {name: (lambda s=search: s.kth_distance(queries, args.k)) for name, search in searches.items()},
            args.repeats, warmup=args.warmup, progress=f"M={size}",
        )
        exact_rows = searches["torch"].search(queries, args.k)[1]
        flat = searches["faiss_flat"].kth_distance(queries, args.k)
        ivf_rows = searches["faiss_ivf"].search(queries, args.k)[1]
        exact_distance = searches["torch"].kth_distance(queries, args.k)
        ivf_distance = searches["faiss_ivf"].kth_distance(queries, args.k)
        summaries = {name: C.summary(values) for name, values in times.items()}
        base = summaries["torch"]["median_s"]
        results[str(size)] = {
            "torch_chunk_size": chunk,
            "ivf_nlist": default_nlist(size),
            "build_s": build_s,
            "search": summaries,
            "speedup_vs_torch": {name: base / s["median_s"] for name, s in summaries.items()},
            "flat_max_abs_error": float((flat - exact_distance).abs().max()),
            "ivf_recall_at_k": recall_at_k(ivf_rows, exact_rows),
            "ivf_kth_distance_max_abs_error": float((ivf_distance - exact_distance).abs().max()),
            "ivf_kth_distance_mean_rel_error": float(((ivf_distance - exact_distance) / exact_distance).mean()),
        }
        r = results[str(size)]
        for name in searches:
            rows.append([
                f"{size:.0e}".replace("e+0", "e"), name + (f" (chunk {chunk})" if name == "torch" and chunk else ""),
                C.ms(summaries[name]["median_s"]), f"{r['speedup_vs_torch'][name]:.2f}x", C.ms(build_s[name]),
                "1 (exact)" if name != "faiss_ivf" else f"{r['ivf_recall_at_k']:.4f}",
                f"{r['flat_max_abs_error']:.1e}" if name == "faiss_flat"
                else f"{r['ivf_kth_distance_max_abs_error']:.1e}" if name == "faiss_ivf" else "0",
            ])
        largest = (size, bank, searches)
    C.table(
        rows,
        ["bank M", "search", "median ms / 800 queries", "speedup vs torch", "build ms", f"recall@{args.k}",
         "max |error| of k-th distance"],
        title=f"k-th neighbour distance of {args.queries} queries, {args.repeats} interleaved repeats",
    )

    size, bank, searches = largest
    sweep = []
    exact_rows = searches["torch"].search(queries, args.k)[1]
    for nprobe in NPROBE_SWEEP:
        searches["faiss_ivf"].index.nprobe = min(nprobe, searches["faiss_ivf"].index.nlist)
        seconds = C.interleaved({"ivf": lambda: searches["faiss_ivf"].search(queries, args.k)}, args.repeats, warmup=1)["ivf"]
        sweep.append({
            "nprobe": nprobe,
            "median_s": C.summary(seconds)["median_s"],
            "recall_at_k": recall_at_k(searches["faiss_ivf"].search(queries, args.k)[1], exact_rows),
        })
    C.table(
        [[s["nprobe"], C.ms(s["median_s"]), f"{s['recall_at_k']:.4f}"] for s in sweep],
        ["nprobe", "median ms / 800 queries", f"recall@{args.k}"],
        title=f"faiss_ivf at M={size} (nlist {default_nlist(size)}): the speed / recall trade-off",
    )
    meeting = [s for s in sweep if s["recall_at_k"] >= TARGET_RECALL]
    best = min(meeting, key=lambda s: s["median_s"]) if meeting else None
    if best is None:
        print(f"no nprobe of {NPROBE_SWEEP} reaches recall {TARGET_RECALL} at M={size}")
    else:
        print(f"fastest IVF search with recall >= {TARGET_RECALL} at M={size}: nprobe {best['nprobe']}, "
              f"{C.ms(best['median_s'])} ms: {C.verdict(best['median_s'], TARGET_SECONDS, higher_is_better=False)}")
    C.write_json(args.output, {
        "benchmark": "bench_knn",
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "results": results,
        "nprobe_sweep": {"bank_size": size, "nlist": default_nlist(size), "points": sweep},
        "target": {"seconds": TARGET_SECONDS, "recall": TARGET_RECALL, "bank_size": 1_000_000},
        "target_met": bool(best and size >= 1_000_000 and best["median_s"] <= TARGET_SECONDS),
        "fastest_meeting_recall": best,
    })


if __name__ == "__main__":
    main()
