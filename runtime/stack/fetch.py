"""Fetch the Kafka and OpenSearch distributions from Maven Central with ``mvn``, once.

Everything lands in a cache folder with a private Maven repository, and a marker file
says a fetch completed, so later runs start from the cache without any network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from raylane.errors import StackError

_LOG4J = "2.25.3"
_SLF4J = "2.0.17"

_KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>raylane.local</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def _mvn(args: list[str], repo: Path, what: str, log_file: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn is not installed; install Maven (apt-get install maven) to fetch the local stack")
    cmd = [mvn, "-B", f"-Dmaven.repo.local={repo}", *args]
    print(f"raylane: fetching {what} from Maven Central ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    downloaded = 0
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if "Downloaded from" in line:
                downloaded += 1
                name = line.split("/")[-1].split(" ")[0]
                print(f"\r  downloaded {downloaded} files (last: {name[:60]:<60})", end="", file=sys.stderr, flush=True)
        rc = proc.wait()
    if downloaded:
        print(file=sys.stderr)
    if rc != 0:
        raise StackError(f"mvn failed to fetch {what}", service=what, log_file=str(log_file))
    print(
        f"raylane: fetched {what} ({downloaded} files) in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
        flush=True,
    )


def kafka_libs(home: Path, version: str) -> Path:
    """The folder of Kafka's jars (broker, dependencies and a log4j2 binding), fetched if missing."""
    target = home / "dist" / f"kafka-{version}"
    lib = target / "lib"
    if (target / ".complete").exists():
        return lib
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / "pom.xml").write_text(_KAFKA_POM.format(kafka=version, slf4j=_SLF4J, log4j=_LOG4J))
    _mvn(
        [
            "-f",
            str(target / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ],
        home / "m2",
        f"org.apache.kafka:kafka_2.13:{version}",
        home / "run" / "logs" / "fetch-kafka.log",
    )
    (target / ".complete").touch()
    return lib


def _zip_from_central(home: Path, artifact: str, file_name: str, log_name: str) -> Path:
    """The zip of Maven ``artifact`` (group:name:version) as ``<home>/dist/<file_name>``, fetched if missing."""
    target = home / "dist"
    zip_path = target / file_name
    if zip_path.exists() and zipfile.is_zipfile(zip_path):
        return zip_path
    target.mkdir(parents=True, exist_ok=True)
    _mvn(
        ["dependency:copy", f"-Dartifact={artifact}:zip", f"-DoutputDirectory={target}"],
        home / "m2",
        artifact,
        home / "run" / "logs" / log_name,
    )
    if not zipfile.is_zipfile(zip_path):
        raise StackError(f"mvn did not produce {zip_path}", service="opensearch")
    return zip_path


def opensearch_zip(home: Path, version: str) -> Path:
    """The OpenSearch distribution zip, fetched if missing."""
    artifact = f"org.opensearch.distribution.integ-test-zip:opensearch:{version}"
    return _zip_from_central(home, artifact, f"opensearch-{version}.zip", "fetch-opensearch.log")


def opensearch_security_zip(home: Path, version: str) -> Path:
    """The ``opensearch-security`` plugin of OpenSearch ``version`` (release ``<version>.0``), fetched if missing."""
    artifact = f"org.opensearch.plugin:opensearch-security:{version}.0"
    return _zip_from_central(home, artifact, f"opensearch-security-{version}.0.zip", "fetch-opensearch-security.log")


def unpack_opensearch(zip_path: Path, install_root: Path, version: str) -> Path:
    """Unpack the zip under ``install_root`` once; returns the OpenSearch home folder."""
    home = install_root / f"opensearch-{version}"
    if (home / ".complete").exists():
        return home
    if home.exists():
        shutil.rmtree(home)
    install_root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(install_root)
    for script in (home / "bin").iterdir():
        script.chmod(0o755)
    (home / ".complete").touch()
    return home
