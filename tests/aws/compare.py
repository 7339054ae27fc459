"""What the differential scripts (*_compare.py) share: a boto3 client for
an endpoint, picking fields out of answers, and the comparison itself."""
import json
import re

import boto3
import botocore.exceptions
from botocore.config import Config


def client(service, endpoint, key, secret):
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def pick(obj, *paths):
    """The values at dotted paths (a[0] indexes lists)."""
    out = {}
    for path in paths:
        v = obj
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
            if v is None:
                break
            if part.startswith("["):
                i = int(part[1:-1])
                v = v[i] if isinstance(v, list) and len(v) > i else None
            else:
                v = v.get(part) if isinstance(v, dict) else None
        out[path] = v
    return out


def arn_shape(arn):
    """An ARN with its account and generated ids blanked out."""
    arn = re.sub(r":\d{12}:", ":ACCOUNT:", arn)
    return re.sub(r"/[0-9a-f]{16}(?=/|$)", "/ID", arn)


def code_of(call):
    """The error code `call` fails with, or None."""
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return None


def compare(reference, keel, documented):
    """Prints each named result as the same or different; the fields listed
    in `documented` as (name, field) -> reason, and whole results listed as
    (name, "*"), are shown but not counted. Returns the exit status: 1 if
    anything else differs."""
    bad = 0
    for (name, want), (_, got) in zip(reference, keel):
        if (name, "*") in documented:
            print(f"documented {name}: moto {json.dumps(want)} keel {json.dumps(got)} "
                  f"({documented[(name, '*')]})")
            continue
        if isinstance(want, dict) and isinstance(got, dict):
            noted = {k for k in set(want) | set(got) if (name, k) in documented}
            for k in sorted(noted):
                print(f"documented {name}.{k}: moto {json.dumps(want.get(k))} keel "
                      f"{json.dumps(got.get(k))} ({documented[(name, k)]})")
            want = {k: v for k, v in want.items() if k not in noted}
            got = {k: v for k, v in got.items() if k not in noted}
        if want == got:
            print(f"same       {name}")
        else:
            bad += 1
            print(f"DIFFERENT  {name}:\n  moto {json.dumps(want)}\n  keel {json.dumps(got)}")
    print(f"{len(reference)} results compared, {bad} undocumented differences")
    return 1 if bad else 0
