"""Static checks of the deployment files (no Docker engine runs here): the
compose topology, its environment and healthchecks, the nginx routing, and the
Dockerfile's stages and user. Run: python3 tests/deploy/check.py"""
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose.get("services", {})
for name in ["postgres", "redis", "jobstream-1", "jobstream-2", "nginx"]:
    check(name in services, f"compose: service {name} is missing")

pg = services.get("postgres", {})
check("pg_isready" in str(pg.get("healthcheck", {}).get("test")), "compose: postgres needs a pg_isready healthcheck")
check("ping" in str(services.get("redis", {}).get("healthcheck", {}).get("test")), "compose: redis needs a ping healthcheck")

for name in ["jobstream-1", "jobstream-2"]:
    node = services.get(name, {})
    env = node.get("environment", {})
    check(str(env.get("DATABASE_URL", "")).startswith("postgres://"), f"compose: {name} DATABASE_URL must be postgres://")
    check(str(env.get("JOBSTREAM_REDIS_URL", "")).startswith("redis://"), f"compose: {name} needs JOBSTREAM_REDIS_URL")
    check("JOBSTREAM_JWT_SECRET" in env, f"compose: {name} needs JOBSTREAM_JWT_SECRET")
    check(str(env.get("JOBSTREAM_LISTEN", "")).startswith("0.0.0.0:"), f"compose: {name} must listen on 0.0.0.0")
    depends = node.get("depends_on", {})
    check(isinstance(depends, dict) and depends.get("postgres", {}).get("condition") == "service_healthy",
          f"compose: {name} must wait for a healthy postgres")
    check("build" in node or "image" in node, f"compose: {name} needs build or image")

nginx = services.get("nginx", {})
check(any(str(p).endswith(":80") for p in nginx.get("ports", [])), "compose: nginx must publish port 80")
check(any("nginx.conf" in str(v) for v in nginx.get("volumes", [])), "compose: nginx must mount deploy/nginx.conf")

conf = (ROOT / "deploy" / "nginx.conf").read_text()
check("ip_hash" in conf, "nginx: Socket.IO polling needs sticky sessions (ip_hash)")
check("proxy_set_header Upgrade $http_upgrade" in conf, "nginx: websocket upgrades need the Upgrade header")
check("$connection_upgrade" in conf, "nginx: websocket upgrades need the Connection header")
for name in ["jobstream-1:3000", "jobstream-2:3000"]:
    check(conf.count(name) >= 1, f"nginx: upstream {name} is missing")
check("proxy_buffering off" in conf, "nginx: streams need proxy_buffering off")

dockerfile = (ROOT / "Dockerfile").read_text()
stages = re.findall(r"^FROM\s+\S+", dockerfile, re.M)
check(len(stages) >= 2, "Dockerfile: must be multi-stage")
users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
check(bool(users) and users[-1] not in ("root", "0"), "Dockerfile: the runtime stage must not run as root")
check("EXPOSE 3000" in dockerfile, "Dockerfile: must expose 3000")
check("COPY --from=" in dockerfile, "Dockerfile: the runtime stage must copy the binary from the build stage")

if failures:
    print("\n".join(f"FAIL {f}" for f in failures))
    print(f"0 passed, {len(failures)} failed")
    sys.exit(1)
print("deployment files: compose topology, nginx routing and Dockerfile are as expected")
print("1 passed, 0 failed")
