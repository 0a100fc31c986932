"""Reads a secret key, a parameter and a whole path from sidekey (standard library only).

SIDEKEY_URL (default http://127.0.0.1:2773); token from SIDEKEY_TOKEN or AWS_TOKEN.
"""

import json
import os
import urllib.parse
import urllib.request

URL = os.environ.get("SIDEKEY_URL", "http://127.0.0.1:2773")
TOKEN = os.environ.get("SIDEKEY_TOKEN") or os.environ.get("AWS_TOKEN", "")


def get(route, **query):
    req = urllib.request.Request(
        f"{URL}{route}?{urllib.parse.urlencode(query)}",
        headers={"X-Aws-Parameters-Secrets-Token": TOKEN},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


# The PSLE/agent route, as existing code calls it: the secret is a JSON string.
db = json.loads(get("/secretsmanager/get", secretId="demo/db")["SecretString"])
print("secret:", db["password"])
print("parameter:", get("/parameter", name="/demo/app/url")["value"])
print("path:", len(get("/parameters", path="/demo/app", recursive="true")), "parameters")
