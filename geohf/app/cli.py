"""``geohf app``: wired into ``geohf`` by :func:`add_app_parser`."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError, check_source
from ..malloc import SERVER, set_malloc


def app_command(args: argparse.Namespace) -> int:
    """Load the model (and the game's dataset) and serve the app until interrupted."""
    set_malloc(SERVER)  # before the server's threads start
    import gradio  # noqa: F401  (the 'app' extra: missing, it is the first thing to say)

    model = check_source(args.model, "model")
    dataset = check_source(args.dataset, "dataset") if args.dataset else None
    from ..inference.predictor import GeoPredictor
    from .game import Game
    from .ui import GeoApp, build_app, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this machine can use the app", file=sys.stderr)
    try:
        predictor = GeoPredictor(model, top_k=args.top_k, device=args.device)
    except (OSError, ValueError) as err:
        raise UserError(f"--model {args.model}: cannot load the model ({' '.join(str(err).split())})") from err
    game = None
    if dataset:
        try:
            game = Game(predictor, dataset, args.split, args.image_column, args.results, args.seed, args.model)
        except (ValueError, FileNotFoundError) as err:
            raise UserError(" ".join(str(err).split())) from err
        print(f"game: {len(game)} images from {args.dataset} [{args.split}]; guesses go to {args.results}")
    if args.max_sessions < 1:
        raise UserError("--max-sessions must be at least 1")
    app = build_app(GeoApp(predictor, game, top_k=args.top_k))
    serve(app, args.host, args.port, args.max_file_size, max_sessions=args.max_sessions)
    return 0


def add_app_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``app`` to a ``geohf`` subparsers object."""
    p = subparsers.add_parser(
        "app",
        help="a local Gradio app: predict uploaded images; play against the model on a dataset; needs geohf[app]",
        description="Serve a Gradio app on this machine (offline). With --dataset, a Game tab records humans. "
        'Needs the app extra: pip install "geohf[app]".',
    )
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--dataset", default=None, help="dataset folder or Hub repo id for the game (default: no game)")
    p.add_argument("--split", default="test", help="game split (default: test)")
    p.add_argument(
        "--image-column", "--image_column", dest="image_column", default="image", help="dataset image column"
    )
    p.add_argument("--results", default="human_results.jsonl", help="JSON lines file the game appends guesses to")
    p.add_argument("--seed", type=int, default=0, help="order of the game's images")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--max-file-size", dest="max_file_size", default="20mb", help="upload size limit (default: 20mb)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=5, help="classes shown (default: 5)")
    p.add_argument(
        "--max-sessions",
        dest="max_sessions",
        type=int,
        default=100,
        help="visitor sessions kept in memory, least recently used dropped beyond (default: 100)",
    )
    p.add_argument("--device", default=None)
    p.set_defaults(func=app_command)
    return p
