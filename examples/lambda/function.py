"""A minimal Lambda function (Python standard library only) that reads a secret through the
sidekey extension, exactly as it would through the AWS Parameters and Secrets Lambda Extension.

It implements the Lambda Runtime API loop itself, so it also runs under `cargo lambda watch
--only-lambda-apis` with no AWS runtime installed (sidekey's end-to-end test does that).
The event may name the secret: {"secretId": "prod/db"}; else SECRET_ID is used.
"""

import json
import os
import urllib.parse
import urllib.request

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = API if API.startswith("http") else f"http://{API}"
PORT = os.environ.get("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "2773")
TOKEN = os.environ.get("AWS_SESSION_TOKEN", "")


def get_secret(secret_id):
    url = f"http://127.0.0.1:{PORT}/secretsmanager/get?secretId={urllib.parse.quote(secret_id, safe='')}"
    req = urllib.request.Request(url, headers={"X-Aws-Parameters-Secrets-Token": TOKEN})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)["SecretString"]


def handler(event):
    secret_id = event.get("secretId") or os.environ["SECRET_ID"]
    return {"secretId": secret_id, "value": get_secret(secret_id)}


def main():
    while True:
        with urllib.request.urlopen(f"{BASE}/2018-06-01/runtime/invocation/next") as resp:
            request_id = resp.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(resp.read() or b"{}")
        try:
            body, path = json.dumps(handler(event)), "response"
        except Exception as err:  # report, as a real runtime would
            body, path = json.dumps({"errorMessage": str(err), "errorType": type(err).__name__}), "error"
        req = urllib.request.Request(
            f"{BASE}/2018-06-01/runtime/invocation/{request_id}/{path}", data=body.encode(), method="POST"
        )
        urllib.request.urlopen(req).close()


if __name__ == "__main__":
    main()
