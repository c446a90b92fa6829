"""``geohf app``: a local Gradio app (predict uploaded images; a game against the model); needs geohf[app]."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..errors import UserError, check_source
from ..malloc import SERVER, set_malloc
from .command import set_command
from .flags import add_image_column, add_top_k


@dataclass
class AppArguments:
    model: str
    dataset: str | None = None
    split: str = "test"
    image_column: str = "image"
    results: str = "human_results.jsonl"
    seed: int = 0
    host: str = "127.0.0.1"
    port: int | None = None
    max_file_size: str = "20mb"
    top_k: int = 5
    max_sessions: int = 100
    device: str | None = None


def app_command(args: AppArguments) -> int:
    """Load the model (and the game's dataset) and serve the app until interrupted."""
    set_malloc(SERVER)  # before the server's threads start
    import gradio  # noqa: F401  (the 'app' extra: missing, it is the first thing to say)

    model = check_source(args.model, "model")
    dataset = check_source(args.dataset, "dataset") if args.dataset else None
    from ..app.game import Game
    from ..app.ui import GeoApp, build_app, serve
    from ..inference.predictor import GeoPredictor

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


def register_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "app",
        help="a local Gradio app: predict uploaded images; play against the model on a dataset; needs geohf[app]",
        description="Serve a Gradio app on this machine (offline). With --dataset, a Game tab records humans. "
        'Needs the app extra: pip install "geohf[app]".',
    )
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--dataset", default=None, help="dataset folder or Hub repo id for the game (default: no game)")
    p.add_argument("--split", default="test", help="game split (default: test)")
    add_image_column(p)
    p.add_argument("--results", default="human_results.jsonl", help="JSON lines file the game appends guesses to")
    p.add_argument("--seed", type=int, default=0, help="order of the game's images")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--max-file-size", dest="max_file_size", default="20mb", help="upload size limit (default: 20mb)")
    add_top_k(p, "classes shown (default: 5)")
    p.add_argument(
        "--max-sessions",
        dest="max_sessions",
        type=int,
        default=100,
        help="visitor sessions kept in memory, least recently used dropped beyond (default: 100)",
    )
    p.add_argument("--device", default=None)
    set_command(p, AppArguments, app_command)
