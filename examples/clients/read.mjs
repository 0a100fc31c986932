// Reads a secret key, a parameter and a whole path from sidekey with Node's built-in fetch.
// SIDEKEY_URL (default http://127.0.0.1:2773); token from SIDEKEY_TOKEN or AWS_TOKEN.
const url = process.env.SIDEKEY_URL ?? "http://127.0.0.1:2773";
const token = process.env.SIDEKEY_TOKEN ?? process.env.AWS_TOKEN ?? "";

async function get(path, query) {
  const res = await fetch(`${url}${path}?${new URLSearchParams(query)}`, {
    headers: { "X-Aws-Parameters-Secrets-Token": token },
  });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

const secret = await get("/secret", { id: "demo/db", key: "password" });
console.log("secret:", secret.value);
const param = await get("/systemsmanager/parameters/get", { name: "/demo/app/url" });
console.log("parameter:", param.Parameter.Value);
const path = await get("/parameters", { path: "/demo/app", recursive: "true" });
console.log("path:", Object.keys(path).length, "parameters");
