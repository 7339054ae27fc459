"""boto 2.49's ELB interface against Keel, with the calls of boto's ELB
tutorial. The endpoint is a host name (ENDPOINT's), so boto derives the
SigV4 scope from it as it would from AWS's.

Environment: ENDPOINT (https://elasticloadbalancing.us-east-1.NAME:PORT),
SSL_CERT_FILE (the CA to trust), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, INSTANCES (two IDs in Keel's
instance registry, comma-separated), INSTANCE_PORT (where they serve HTTP
and /health). Phases: "create" (the balancer, its health check and
instances, in service), "delete".
"""
import ipaddress
import os
import sys
import time
from urllib.parse import urlparse

import boto
from boto.ec2.elb import ELBConnection, HealthCheck
from boto.exception import BotoServerError
from boto.regioninfo import RegionInfo

INSTANCE_PORT = int(os.environ["INSTANCE_PORT"])
INSTANCES = os.environ["INSTANCES"].split(",")


def by_address(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def connect():
    url = urlparse(os.environ["ENDPOINT"])
    secure = url.scheme == "https"
    if secure:
        # boto 2 reads the CA to trust from its own configuration.
        if not boto.config.has_section("Boto"):
            boto.config.add_section("Boto")
        boto.config.set("Boto", "ca_certificates_file", os.environ["SSL_CERT_FILE"])
    # boto 2 matches a certificate's DNS names only, and cannot check one
    # against an address: there it runs over TLS without checking it.
    return ELBConnection(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                         is_secure=secure, port=url.port,
                         validate_certs=not by_address(url.hostname),
                         region=RegionInfo(name="us-east-1", endpoint=url.hostname))


def create():
    conn = connect()
    ports = [(80, INSTANCE_PORT, "http"), (443, 8443, "tcp")]
    lb = conn.create_load_balancer("my-lb", ["us-east-1a", "us-east-1b"], ports)
    assert lb.dns_name.startswith("my-lb-"), lb.dns_name
    hc = HealthCheck(interval=20, healthy_threshold=3, unhealthy_threshold=5,
                     target=f"HTTP:{INSTANCE_PORT}/health")
    lb.configure_health_check(hc)
    lb.register_instances(INSTANCES)
    assert sorted(i.id for i in lb.instances) == sorted(INSTANCES), lb.instances
    for _ in range(100):
        states = sorted((s.instance_id, s.state) for s in lb.get_instance_health())
        if all(state == "InService" for _, state in states):
            break
        time.sleep(0.1)
    assert states == sorted((i, "InService") for i in INSTANCES), states
    lb.disable_zones(["us-east-1b"])
    assert lb.availability_zones == ["us-east-1a"], lb.availability_zones
    (got,) = conn.get_all_load_balancers(load_balancer_names=["my-lb"])
    assert sorted(l.load_balancer_port for l in got.listeners) == [80, 443], got.listeners
    assert got.health_check.target == f"HTTP:{INSTANCE_PORT}/health", got.health_check
    assert got.health_check.interval == 20, got.health_check.interval
    assert sorted(i.id for i in got.instances) == sorted(INSTANCES), got.instances
    print("created")


def delete():
    conn = connect()
    (lb,) = conn.get_all_load_balancers(load_balancer_names=["my-lb"])
    lb.deregister_instances([INSTANCES[1]])
    assert [i.id for i in lb.instances] == [INSTANCES[0]], lb.instances
    lb.delete()
    try:
        conn.get_all_load_balancers(load_balancer_names=["my-lb"])
        raise AssertionError("my-lb is still there")
    except BotoServerError as e:
        assert e.error_code == "LoadBalancerNotFound", e
    assert conn.get_all_load_balancers() == []
    print("deleted")


{"create": create, "delete": delete}[sys.argv[1]]()
