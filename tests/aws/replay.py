"""A boto3 request captured on the wire and replayed, as an attacker who saw
it would: unchanged (refused as a replay), and with its body swapped for
another action under an added x-amz-content-sha256 of the original body
(refused: that header must be signed and match the body). Neither changes
anything; the signer's own next request still works.

Environment: ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
"""
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request

import boto3

captured = []


def capture(request, **_):
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    captured.append((request.method, request.url, dict(request.headers), body))


def send(method, url, headers, body):
    """Sends a request as given; (status, text)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


elb = boto3.client("elbv2", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1")
elb.meta.events.register("before-send", capture)
made = elb.create_target_group(Name="replayed", Protocol="HTTP", Port=80, VpcId="vpc-1")
arn = made["TargetGroups"][0]["TargetGroupArn"]
method, url, headers, body = captured[-1]
assert b"Action=CreateTargetGroup" in body, body

# Replayed unchanged: refused, nothing made.
status, text = send(method, url, headers, body)
assert status == 403 and "already received" in text, (status, text)
print("unchanged replay:", status)

# The body swapped for a delete, with the original body's hash declared.
swapped = urllib.parse.urlencode(
    {"Action": "DeleteTargetGroup", "Version": "2015-12-01", "TargetGroupArn": arn}).encode()
forged = dict(headers)
forged["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
forged["Content-Length"] = str(len(swapped))
status, text = send(method, url, forged, swapped)
assert status in (400, 403) and "SignatureDoesNotMatch" in text, (status, text)
print("swapped body:", status)

# The same without the header: the signature does not cover that body.
forged.pop("X-Amz-Content-SHA256")
status, text = send(method, url, forged, swapped)
assert status == 403 and "SignatureDoesNotMatch" in text, (status, text)

# Nothing changed, and the signer carries on.
groups = elb.describe_target_groups(Names=["replayed"])["TargetGroups"]
assert [g["TargetGroupArn"] for g in groups] == [arn], groups
elb.delete_target_group(TargetGroupArn=arn)
print("target group intact; replays refused")
