"""TensorBoard behind a port of jhproxy-routes, with a small run of example scalars.

``python tensorboard_app.py --logdir runs --port 8050 --bind_all --path_prefix
/ports/alice/8050`` writes a run to ``runs/`` and starts TensorBoard with these very flags,
as ``tensorboard --logdir runs ...`` would. ``--path_prefix`` (the route's path, on a path
route only) puts TensorBoard's page, scripts and data API below the route; on a subdomain
route, no option. ``--bind_all``: listen on the server's addresses, not only on localhost.
TensorFlow is not needed: TensorBoard's own event writer makes the run.
"""

import math
import sys
import time
from pathlib import Path

from tensorboard import default, program
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def write_example_run(logdir: Path) -> None:
    writer = EventFileWriter(str(logdir / "example"))
    for step in range(20):
        summary = Summary(value=[Summary.Value(tag="jhproxy-routes/loss", simple_value=math.exp(-step / 5))])
        writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
    writer.close()


if __name__ == "__main__":
    argv = sys.argv[1:]
    write_example_run(Path(argv[argv.index("--logdir") + 1]))
    board = program.TensorBoard(plugins=default.get_plugins())
    board.configure(argv=[sys.argv[0], *argv])
    sys.exit(board.main())
