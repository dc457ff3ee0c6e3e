"""Runs on the server: asks every hospital it finds, writes what came back."""

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    out = Path(str(context.run_config["marker-dir"]))
    wanted = int(context.run_config["wait-for-nodes"])
    deadline = time.monotonic() + 180
    nodes = list(grid.get_node_ids())
    while len(nodes) < wanted and time.monotonic() < deadline:
        time.sleep(1)
        nodes = list(grid.get_node_ids())
    messages = [Message(RecordDict({"ask": ConfigRecord({"x": 1})}), dst_node_id=node,
                        message_type="query") for node in nodes]
    replies = grid.send_and_receive(messages, timeout=90)
    result = {"nodes": len(nodes), "replies": [
        {"error": r.error.reason if r.has_error() else "", "code": r.error.code
         if r.has_error() else 0} for r in replies]}
    (out / "server-result.json").write_text(json.dumps(result))
