"""A classic load balancer through boto3's elb client, against Keel.

Environment: ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HTTP_PORT
and TCP_PORT (the load balancer's ports), INSTANCE_PORT (the instances'
HTTP port, which also answers /health) and ECHO_PORT (their TCP echo port).
Instances i-0aaa and i-0bbb are in Keel's instance registry. Phase "create"
builds the load balancer; "errors" checks refusals change nothing;
"delete" takes it apart.
"""
import datetime
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import boto3
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from compare import code_of

HTTP_PORT = int(os.environ["HTTP_PORT"])
TCP_PORT = int(os.environ["TCP_PORT"])
INSTANCE_PORT = int(os.environ["INSTANCE_PORT"])
ECHO_PORT = int(os.environ["ECHO_PORT"])


def client():
    return boto3.client(
        "elb",
        endpoint_url=os.environ["ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}),
    )


def describe(elb):
    return elb.describe_load_balancers(LoadBalancerNames=["web"])["LoadBalancerDescriptions"][0]


def states(elb):
    return sorted((s["InstanceId"], s["State"]) for s in
                  elb.describe_instance_health(LoadBalancerName="web")["InstanceStates"])


def create():
    elb = client()
    dns = elb.create_load_balancer(
        LoadBalancerName="web",
        Listeners=[
            {"Protocol": "HTTP", "LoadBalancerPort": HTTP_PORT, "InstanceProtocol": "HTTP",
             "InstancePort": INSTANCE_PORT},
            {"Protocol": "TCP", "LoadBalancerPort": TCP_PORT, "InstancePort": ECHO_PORT},
        ],
        AvailabilityZones=["us-east-1a"],
        Tags=[{"Key": "team", "Value": "blue"}],
    )["DNSName"]
    assert dns.startswith("web-"), dns
    hc = elb.configure_health_check(LoadBalancerName="web", HealthCheck={
        "Target": f"HTTP:{INSTANCE_PORT}/health", "Interval": 5, "Timeout": 2,
        "UnhealthyThreshold": 2, "HealthyThreshold": 2})["HealthCheck"]
    assert hc["Target"] == f"HTTP:{INSTANCE_PORT}/health", hc
    registered = elb.register_instances_with_load_balancer(
        LoadBalancerName="web", Instances=[{"InstanceId": "i-0aaa"}, {"InstanceId": "i-0bbb"}])["Instances"]
    assert sorted(i["InstanceId"] for i in registered) == ["i-0aaa", "i-0bbb"], registered
    # The waiter polls every 15 s by default; ask it to look each second.
    elb.get_waiter("instance_in_service").wait(LoadBalancerName="web",
                                               WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    assert states(elb) == [("i-0aaa", "InService"), ("i-0bbb", "InService")], states(elb)

    elb.create_lb_cookie_stickiness_policy(LoadBalancerName="web", PolicyName="sticky",
                                           CookieExpirationPeriod=300)
    elb.set_load_balancer_policies_of_listener(LoadBalancerName="web", LoadBalancerPort=HTTP_PORT,
                                               PolicyNames=["sticky"])
    elb.create_load_balancer_policy(
        LoadBalancerName="web", PolicyName="proxy", PolicyTypeName="ProxyProtocolPolicyType",
        PolicyAttributes=[{"AttributeName": "ProxyProtocol", "AttributeValue": "true"}])
    elb.set_load_balancer_policies_for_backend_server(LoadBalancerName="web", InstancePort=ECHO_PORT,
                                                      PolicyNames=["proxy"])
    attrs = elb.modify_load_balancer_attributes(LoadBalancerName="web", LoadBalancerAttributes={
        "ConnectionDraining": {"Enabled": True, "Timeout": 20},
        "ConnectionSettings": {"IdleTimeout": 120},
        "CrossZoneLoadBalancing": {"Enabled": True},
    })["LoadBalancerAttributes"]
    assert attrs["ConnectionDraining"] == {"Enabled": True, "Timeout": 20}, attrs
    assert attrs["ConnectionSettings"] == {"IdleTimeout": 120}, attrs

    lb = describe(elb)
    listeners = sorted((d["Listener"]["Protocol"], d["Listener"]["LoadBalancerPort"],
                        d["Listener"]["InstanceProtocol"], d["Listener"]["InstancePort"],
                        d["PolicyNames"]) for d in lb["ListenerDescriptions"])
    assert listeners == sorted([("HTTP", HTTP_PORT, "HTTP", INSTANCE_PORT, ["sticky"]),
                                ("TCP", TCP_PORT, "TCP", ECHO_PORT, [])]), listeners
    assert lb["Policies"]["LBCookieStickinessPolicies"] == [
        {"PolicyName": "sticky", "CookieExpirationPeriod": 300}], lb["Policies"]
    assert lb["Policies"]["OtherPolicies"] == ["proxy"], lb["Policies"]
    assert lb["BackendServerDescriptions"] == [
        {"InstancePort": ECHO_PORT, "PolicyNames": ["proxy"]}], lb["BackendServerDescriptions"]
    assert sorted(i["InstanceId"] for i in lb["Instances"]) == ["i-0aaa", "i-0bbb"], lb["Instances"]
    assert lb["HealthCheck"]["Target"] == f"HTTP:{INSTANCE_PORT}/health", lb["HealthCheck"]
    assert lb["AvailabilityZones"] == ["us-east-1a"], lb
    assert elb.describe_tags(LoadBalancerNames=["web"])["TagDescriptions"][0]["Tags"] == [
        {"Key": "team", "Value": "blue"}]
    policies = elb.describe_load_balancer_policies(LoadBalancerName="web")["PolicyDescriptions"]
    assert sorted(p["PolicyName"] for p in policies) == ["proxy", "sticky"], policies

    # A second balancer, so the paginator has two pages to walk.
    elb.create_load_balancer(LoadBalancerName="other", AvailabilityZones=["us-east-1a"], Listeners=[
        {"Protocol": "http", "LoadBalancerPort": int(os.environ["OTHER_PORT"]), "InstancePort": 80}])
    pages = list(elb.get_paginator("describe_load_balancers").paginate(PaginationConfig={"PageSize": 1}))
    names = [d["LoadBalancerName"] for p in pages for d in p["LoadBalancerDescriptions"]]
    assert names == ["other", "web"] and len(pages) == 2, pages
    elb.delete_load_balancer(LoadBalancerName="other")
    print("created")


def signed(params, service="elasticloadbalancing", when=None):
    """POSTs `params` signed as botocore signs (for `service`, at `when`):
    the HTTP status and error code."""
    body = urllib.parse.urlencode(dict(params, Version="2012-06-01"))
    request = AWSRequest(method="POST", url=os.environ["ENDPOINT"] + "/", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    now = botocore.auth.get_current_datetime
    if when:
        botocore.auth.get_current_datetime = lambda: when
    try:
        credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
        botocore.auth.SigV4Auth(credentials, service, "us-east-1").add_auth(request)
    finally:
        botocore.auth.get_current_datetime = now
    prepared = request.prepare()
    try:
        with urllib.request.urlopen(urllib.request.Request(
                prepared.url, data=body.encode(), headers=dict(prepared.headers), method="POST")) as r:
            return r.status, None
    except urllib.error.HTTPError as e:
        return e.code, re.search(r"<Code>(.*?)</Code>", e.read().decode()).group(1)


def errors():
    elb = client()
    before = describe(elb)
    hour_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=1)
    raw = {
        "works": (signed({"Action": "DescribeLoadBalancers"}), (200, None)),
        "other service": (signed({"Action": "DescribeLoadBalancers"}, service="ec2"),
                          (403, "SignatureDoesNotMatch")),
        "an hour old": (signed({"Action": "DescribeLoadBalancers"}, when=hour_ago), (400, "RequestExpired")),
        "unknown action": (signed({"Action": "LaunchRockets"}), (400, "InvalidAction")),
        "no name": (signed({"Action": "DeleteLoadBalancer"}), (400, "ValidationError")),
        "listener port not a number": (signed({
            "Action": "CreateLoadBalancerListeners", "LoadBalancerName": "web",
            "Listeners.member.1.Protocol": "HTTP", "Listeners.member.1.LoadBalancerPort": "eighty",
            "Listeners.member.1.InstancePort": "80"}), (400, "ValidationError")),
        "member list without numbers": (signed({
            "Action": "RegisterInstancesWithLoadBalancer", "LoadBalancerName": "web",
            "Instances.member.first.InstanceId": "i-0aaa"}), (400, "ValidationError")),
        "member without its id": (signed({
            "Action": "RegisterInstancesWithLoadBalancer", "LoadBalancerName": "web",
            "Instances.member.1.Id": "i-0aaa"}), (400, "InvalidInstance")),
    }
    wrong = {k: got for k, (got, want) in raw.items() if got != want}
    assert not wrong, wrong
    listener = [{"Protocol": "HTTP", "LoadBalancerPort": 1, "InstancePort": 80}]
    checks = {
        "unknown balancer": (code_of(lambda: elb.describe_load_balancers(LoadBalancerNames=["nope"])),
                             "LoadBalancerNotFound"),
        "taken name": (code_of(lambda: elb.create_load_balancer(
            LoadBalancerName="web", Listeners=listener, AvailabilityZones=["us-east-1a"])),
            "DuplicateLoadBalancerName"),
        "bad name": (code_of(lambda: elb.create_load_balancer(
            LoadBalancerName="-bad-", Listeners=listener, AvailabilityZones=["us-east-1a"])),
            "ValidationError"),
        "unknown protocol": (code_of(lambda: elb.create_load_balancer(
            LoadBalancerName="x", AvailabilityZones=["us-east-1a"],
            Listeners=[{"Protocol": "UDP", "LoadBalancerPort": 1, "InstancePort": 1}])),
            "UnsupportedProtocol"),
        "https without certificate": (code_of(lambda: elb.create_load_balancer(
            LoadBalancerName="x", AvailabilityZones=["us-east-1a"],
            Listeners=[{"Protocol": "HTTPS", "LoadBalancerPort": 1, "InstancePort": 1,
                        "SSLCertificateId": "arn:aws:iam::1:server-certificate/none"}])),
            "CertificateNotFound"),
        "unknown instance": (code_of(lambda: elb.register_instances_with_load_balancer(
            LoadBalancerName="web", Instances=[{"InstanceId": "i-nope"}])), "InvalidInstance"),
        "bad target": (code_of(lambda: elb.configure_health_check(LoadBalancerName="web", HealthCheck={
            "Target": "HTTP:80", "Interval": 5, "Timeout": 2, "UnhealthyThreshold": 2,
            "HealthyThreshold": 2})), "ValidationError"),
        "timeout not under interval": (code_of(lambda: elb.configure_health_check(
            LoadBalancerName="web", HealthCheck={"Target": "TCP:80", "Interval": 5, "Timeout": 5,
                                                 "UnhealthyThreshold": 2, "HealthyThreshold": 2})),
            "ValidationError"),
        "changed listener": (code_of(lambda: elb.create_load_balancer_listeners(
            LoadBalancerName="web", Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": HTTP_PORT,
                                                "InstancePort": 1}])), "DuplicateListener"),
        "unknown policy": (code_of(lambda: elb.set_load_balancer_policies_of_listener(
            LoadBalancerName="web", LoadBalancerPort=HTTP_PORT, PolicyNames=["nope"])), "PolicyNotFound"),
        "unknown policy type": (code_of(lambda: elb.create_load_balancer_policy(
            LoadBalancerName="web", PolicyName="p", PolicyTypeName="NopePolicyType")),
            "PolicyTypeNotFound"),
        "stickiness on tcp": (code_of(lambda: elb.set_load_balancer_policies_of_listener(
            LoadBalancerName="web", LoadBalancerPort=TCP_PORT, PolicyNames=["sticky"])),
            "InvalidConfigurationRequest"),
        "policy in use": (code_of(lambda: elb.delete_load_balancer_policy(
            LoadBalancerName="web", PolicyName="sticky")), "InvalidConfigurationRequest"),
        "access log": (code_of(lambda: elb.modify_load_balancer_attributes(
            LoadBalancerName="web", LoadBalancerAttributes={"AccessLog": {
                "Enabled": True, "S3BucketName": "b"}})), "InvalidConfigurationRequest"),
    }
    wrong = {k: got for k, (got, want) in checks.items() if got != want}
    assert not wrong, wrong
    after = describe(elb)
    assert before == after, (before, after)
    assert [d["LoadBalancerName"] for d in elb.describe_load_balancers()["LoadBalancerDescriptions"]] == ["web"]
    print("errors ok")


def delete():
    elb = client()
    left = elb.deregister_instances_from_load_balancer(
        LoadBalancerName="web", Instances=[{"InstanceId": "i-0bbb"}])["Instances"]
    assert [i["InstanceId"] for i in left] == ["i-0aaa"], left
    elb.get_waiter("instance_deregistered").wait(
        LoadBalancerName="web", Instances=[{"InstanceId": "i-0bbb"}],
        WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    elb.set_load_balancer_policies_of_listener(LoadBalancerName="web", LoadBalancerPort=HTTP_PORT,
                                               PolicyNames=[])
    elb.delete_load_balancer_policy(LoadBalancerName="web", PolicyName="sticky")
    elb.delete_load_balancer_listeners(LoadBalancerName="web", LoadBalancerPorts=[TCP_PORT])
    lb = describe(elb)
    assert [d["Listener"]["LoadBalancerPort"] for d in lb["ListenerDescriptions"]] == [HTTP_PORT], lb
    assert lb["Policies"]["LBCookieStickinessPolicies"] == [], lb["Policies"]
    elb.delete_load_balancer(LoadBalancerName="web")
    assert code_of(lambda: describe(elb)) == "LoadBalancerNotFound"
    elb.delete_load_balancer(LoadBalancerName="web")  # gone already: no error, as on AWS
    print("deleted")


{"create": create, "errors": errors, "delete": delete}[sys.argv[1]]()
