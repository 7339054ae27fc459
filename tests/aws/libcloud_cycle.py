"""Apache libcloud's ELB and ALB drivers against Keel, with the calls of
libcloud's load balancer tutorial.

Environment: ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, PORT (the
classic balancer's port, which libcloud also uses as the instances' port),
ALB_PORT, SITE and BLOG (instance addresses; both serve on PORT).
Instances i-lib1 and i-lib2 are in Keel's instance registry.

Phases: "elb" builds the classic balancer with PROXY protocol to the
instances; "plain" clears that policy and sets stickiness; "elb-delete"
takes it apart; "alb" builds the ALB seed's / and /blog case.
"""
import os
import sys
from urllib.parse import urlparse

from libcloud.compute.base import Node
from libcloud.compute.types import NodeState
from libcloud.loadbalancer.base import Algorithm, Member
from libcloud.loadbalancer.providers import get_driver
from libcloud.loadbalancer.types import Provider

PORT = int(os.environ["PORT"])


def driver(provider):
    d = get_driver(provider)(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                             "us-east-1")
    # The drivers hard-code AWS's host; point the connection at Keel.
    url = urlparse(os.environ["ENDPOINT"])
    d.connection.host, d.connection.port = url.hostname, url.port
    d.connection.secure = url.scheme == "https"  # the CA: REQUESTS_CA_BUNDLE
    d.connection.connect(base_url=os.environ["ENDPOINT"])
    return d


class Attributes(dict):
    """Policy attributes. libcloud's ex_create_balancer_policy still calls
    Python 2's dict.iteritems, so the dict it is given must have one."""

    def iteritems(self):
        return iter(self.items())


def node(node_id):
    return Node(id=node_id, name=node_id, state=NodeState.RUNNING, public_ips=[], private_ips=[],
                driver=None)


def elb():
    d = driver(Provider.ELB)
    assert d.list_balancers() == [], d.list_balancers()
    balancer = d.create_balancer(name="tutorial", port=PORT, protocol="http",
                                 algorithm=Algorithm.ROUND_ROBIN, members=[])
    d.balancer_attach_compute_node(balancer, node("i-lib1"))
    d.balancer_attach_compute_node(balancer, node("i-lib2"))
    got = d.get_balancer("tutorial", ex_fetch_tags=True)
    assert got.name == "tutorial" and got.ip.startswith("tutorial-"), got
    assert sorted(m.id for m in got.list_members()) == ["i-lib1", "i-lib2"], got.list_members()
    assert [b.name for b in d.list_balancers()] == ["tutorial"]
    assert "ProxyProtocolPolicyType" in d.ex_list_balancer_policy_types()
    assert d.ex_create_balancer_policy(
        name="tutorial", policy_name="EnableProxyProtocol", policy_type="ProxyProtocolPolicyType",
        policy_attributes=Attributes(ProxyProtocol="true"))
    assert d.ex_set_balancer_policies_backend_server(
        name="tutorial", instance_port=PORT, policies=["EnableProxyProtocol"])
    assert d.ex_list_balancer_policies(got) == ["EnableProxyProtocol"], d.ex_list_balancer_policies(got)
    print("elb created")


def plain():
    d = driver(Provider.ELB)
    assert d.ex_set_balancer_policies_backend_server(name="tutorial", instance_port=PORT, policies=[])
    assert d.ex_create_balancer_policy(
        name="tutorial", policy_name="sticky", policy_type="LBCookieStickinessPolicyType",
        policy_attributes=Attributes(CookieExpirationPeriod="60"))
    assert d.ex_set_balancer_policies_listener(name="tutorial", port=PORT, policies=["sticky"])
    print("elb plain")


def elb_delete():
    d = driver(Provider.ELB)
    balancer = d.get_balancer("tutorial")
    member = [m for m in balancer.list_members() if m.id == "i-lib2"][0]
    assert d.balancer_detach_member(balancer, member)
    assert [m.id for m in d.get_balancer("tutorial").list_members()] == ["i-lib1"]
    assert d.ex_set_balancer_policies_listener(name="tutorial", port=PORT, policies=[])
    assert d.ex_delete_balancer_policy(name="tutorial", policy_name="sticky")
    assert d.ex_delete_balancer_policy(name="tutorial", policy_name="EnableProxyProtocol")
    assert d.ex_list_balancer_policies(balancer) == []
    assert d.destroy_balancer(balancer)
    assert d.list_balancers() == []
    print("elb deleted")


def alb():
    d = driver(Provider.ALB)
    site_ip, site_port = os.environ["SITE"].split(":")
    blog_ip, blog_port = os.environ["BLOG"].split(":")
    balancer = d.create_balancer(
        name="seed", port=int(os.environ["ALB_PORT"]), protocol="HTTP", algorithm=None,
        members=[Member(site_ip, None, int(site_port))], ex_subnets=["subnet-1"])
    listener = balancer.extra["listener"]
    blog = d.ex_create_target_group("blog", int(blog_port), "HTTP", balancer.extra["vpc"],
                                    health_check_path="/health")
    assert d.ex_register_targets(blog, [Member(blog_ip, None, int(blog_port))])
    rule = d.ex_create_listener_rule(listener, 10, blog, condition_field="path-pattern",
                                     condition_value="/blog*")
    assert rule.priority == "10" and rule.conditions == {"path-pattern": ["/blog*"]}, rule.conditions
    got = d.get_balancer(balancer.id)
    assert got.name == "seed" and got.port == int(os.environ["ALB_PORT"]), got
    rules = d.ex_get_listener(listener.id).rules
    assert sorted(r.priority for r in rules) == ["10", "default"], rules
    assert [b.name for b in d.list_balancers()] == ["seed"]
    print("alb created")


{"elb": elb, "plain": plain, "elb-delete": elb_delete, "alb": alb}[sys.argv[1]]()
