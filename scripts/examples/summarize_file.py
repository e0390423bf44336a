#!/usr/bin/env python3
"""An exec: agent that takes files and gives one back (artifacts).

The node puts the task's input artifacts in the folder named by AGENTMESH_ARTIFACTS_IN, each under its name.
Every regular file the agent leaves in AGENTMESH_ARTIFACTS_OUT becomes an artifact of the result; the JSON on
stdout is the result itself.

    agentmesh run --capability summarize-file="exec:python3 scripts/examples/summarize_file.py"
    agentmesh submit --capability summarize-file --input '{"sentences": 2}' --attach report.txt \
        --wait --save-artifacts out/
"""
import json
import os
import re
import sys

request = json.load(sys.stdin)
keep = int(request.get("sentences", 3)) if isinstance(request, dict) else 3
inputs = os.environ["AGENTMESH_ARTIFACTS_IN"]
outputs = os.environ["AGENTMESH_ARTIFACTS_OUT"]

summaries = []
for name in sorted(os.listdir(inputs)):
    with open(os.path.join(inputs, name), encoding="utf-8", errors="replace") as source:
        text = source.read()
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    words = len(text.split())
    summaries.append({"file": name, "words": words, "summary": " ".join(sentences[:keep])})

with open(os.path.join(outputs, "summary.md"), "w", encoding="utf-8") as out:
    for item in summaries:
        out.write(f"## {item['file']} ({item['words']} words)\n\n{item['summary']}\n\n")

json.dump({"summarized": [item["file"] for item in summaries], "words": sum(item["words"] for item in summaries)}, sys.stdout)
