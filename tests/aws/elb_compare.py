"""One boto3 classic-ELB script against moto's server and against Keel: the
parsed results must be the same, apart from the differences documented
below.

Environment: MOTO (moto_server's URL), ENDPOINT (Keel's AWS API),
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a Keel key), LB_PORT and
TCP_PORT (free ports), INSTANCE_PORT (where the instances answer HTTP and
/health), INSTANCES (two instance IDs in Keel's registry, comma-separated).
Prints the comparison; exits 1 on an undocumented difference.
"""
import os
import sys
import time

from compare import client, code_of, compare, pick

# Where Keel and moto answer differently on purpose, and why:
# (call, field) -> reason. Other fields of the same call still count.
DOCUMENTED = {
    ("register", "*"): "moto answers RegisterInstancesWithLoadBalancer with no instances; "
                       "AWS and Keel give the resulting list",
    ("deregister", "*"): "moto answers DeregisterInstancesFromLoadBalancer with no instances; "
                         "AWS and Keel give the resulting list",
    ("unknown policy", "*"): "moto sets a listener policy that does not exist; AWS and Keel refuse "
                             "with PolicyNotFound",
}

LB_PORT = int(os.environ["LB_PORT"])
TCP_PORT = int(os.environ["TCP_PORT"])
INSTANCE_PORT = int(os.environ["INSTANCE_PORT"])


def scenario(elb, instances):
    out = []
    rec = lambda name, value: out.append([name, value])
    alias = {i: f"instance-{n}" for n, i in enumerate(instances)}
    ids = lambda items: sorted(alias.get(i["InstanceId"], i["InstanceId"]) for i in items)
    describe = lambda: elb.describe_load_balancers(LoadBalancerNames=["cmp-web"])["LoadBalancerDescriptions"][0]

    dns = elb.create_load_balancer(
        LoadBalancerName="cmp-web", AvailabilityZones=["us-east-1a"],
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": LB_PORT, "InstanceProtocol": "HTTP",
                    "InstancePort": INSTANCE_PORT}],
        Tags=[{"Key": "team", "Value": "blue"}])["DNSName"]
    rec("create_load_balancer", dns.startswith("cmp-web"))
    lb = describe()
    rec("describe_load_balancers", pick(
        lb, "LoadBalancerName", "Scheme", "AvailabilityZones", "Instances",
        "ListenerDescriptions[0].Listener", "ListenerDescriptions[0].PolicyNames",
        "BackendServerDescriptions", "Policies.LBCookieStickinessPolicies",
        "Policies.AppCookieStickinessPolicies", "Policies.OtherPolicies"))
    rec("health check", elb.configure_health_check(LoadBalancerName="cmp-web", HealthCheck={
        "Target": f"HTTP:{INSTANCE_PORT}/health", "Interval": 5, "Timeout": 2,
        "UnhealthyThreshold": 2, "HealthyThreshold": 3})["HealthCheck"])
    rec("register", ids(elb.register_instances_with_load_balancer(
        LoadBalancerName="cmp-web", Instances=[{"InstanceId": i} for i in instances])["Instances"]))
    health = []
    for _ in range(100):
        health = sorted((alias[s["InstanceId"]], s["State"]) for s in
                        elb.describe_instance_health(LoadBalancerName="cmp-web")["InstanceStates"])
        if all(s == "InService" for _, s in health):
            break
        time.sleep(0.1)
    rec("describe_instance_health", health)

    elb.create_lb_cookie_stickiness_policy(LoadBalancerName="cmp-web", PolicyName="lb-sticky",
                                           CookieExpirationPeriod=60)
    elb.create_app_cookie_stickiness_policy(LoadBalancerName="cmp-web", PolicyName="app-sticky",
                                            CookieName="JSESSIONID")
    elb.set_load_balancer_policies_of_listener(LoadBalancerName="cmp-web", LoadBalancerPort=LB_PORT,
                                               PolicyNames=["app-sticky"])
    elb.create_load_balancer_policy(
        LoadBalancerName="cmp-web", PolicyName="proxy", PolicyTypeName="ProxyProtocolPolicyType",
        PolicyAttributes=[{"AttributeName": "ProxyProtocol", "AttributeValue": "true"}])
    elb.set_load_balancer_policies_for_backend_server(LoadBalancerName="cmp-web",
                                                      InstancePort=INSTANCE_PORT, PolicyNames=["proxy"])
    lb = describe()
    rec("policies", pick(lb, "Policies.LBCookieStickinessPolicies", "Policies.AppCookieStickinessPolicies",
                         "ListenerDescriptions[0].PolicyNames", "BackendServerDescriptions"))
    rec("describe_load_balancer_policies", sorted(
        (p["PolicyName"], p["PolicyTypeName"],
         sorted((a["AttributeName"], a["AttributeValue"]) for a in p["PolicyAttributeDescriptions"]))
        for p in elb.describe_load_balancer_policies(
            LoadBalancerName="cmp-web", PolicyNames=["proxy"])["PolicyDescriptions"]))
    elb.set_load_balancer_policies_for_backend_server(LoadBalancerName="cmp-web",
                                                      InstancePort=INSTANCE_PORT, PolicyNames=[])

    attrs = elb.modify_load_balancer_attributes(LoadBalancerName="cmp-web", LoadBalancerAttributes={
        "ConnectionDraining": {"Enabled": True, "Timeout": 45},
        "ConnectionSettings": {"IdleTimeout": 90}})["LoadBalancerAttributes"]
    rec("modify_load_balancer_attributes", pick(attrs, "ConnectionDraining", "ConnectionSettings"))
    rec("describe_load_balancer_attributes", pick(
        elb.describe_load_balancer_attributes(LoadBalancerName="cmp-web")["LoadBalancerAttributes"],
        "ConnectionDraining", "ConnectionSettings", "CrossZoneLoadBalancing.Enabled", "AccessLog.Enabled"))

    elb.add_tags(LoadBalancerNames=["cmp-web"], Tags=[{"Key": "env", "Value": "test"}])
    elb.remove_tags(LoadBalancerNames=["cmp-web"], Tags=[{"Key": "team"}])
    rec("describe_tags", elb.describe_tags(LoadBalancerNames=["cmp-web"])["TagDescriptions"])

    elb.create_load_balancer_listeners(LoadBalancerName="cmp-web", Listeners=[
        {"Protocol": "TCP", "LoadBalancerPort": TCP_PORT, "InstancePort": INSTANCE_PORT}])
    rec("listeners", sorted((d["Listener"]["Protocol"], d["Listener"]["LoadBalancerPort"] == LB_PORT,
                             d["Listener"]["InstancePort"] == INSTANCE_PORT)
                            for d in describe()["ListenerDescriptions"]))
    elb.delete_load_balancer_listeners(LoadBalancerName="cmp-web", LoadBalancerPorts=[TCP_PORT])
    rec("listeners after delete", len(describe()["ListenerDescriptions"]))
    rec("deregister", ids(elb.deregister_instances_from_load_balancer(
        LoadBalancerName="cmp-web", Instances=[{"InstanceId": instances[1]}])["Instances"]))

    rec("unknown load balancer", code_of(lambda: elb.describe_load_balancers(LoadBalancerNames=["nope"])))
    rec("duplicate name", code_of(lambda: elb.create_load_balancer(
        LoadBalancerName="cmp-web", AvailabilityZones=["us-east-1a"],
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 1, "InstancePort": 1}])))
    rec("unknown policy", code_of(lambda: elb.set_load_balancer_policies_of_listener(
        LoadBalancerName="cmp-web", LoadBalancerPort=LB_PORT, PolicyNames=["nope"])))
    rec("health of unknown balancer", code_of(lambda: elb.describe_instance_health(LoadBalancerName="nope")))

    elb.delete_load_balancer(LoadBalancerName="cmp-web")
    rec("after delete", code_of(describe))
    rec("delete again", code_of(lambda: elb.delete_load_balancer(LoadBalancerName="cmp-web")))
    rec("left", elb.describe_load_balancers()["LoadBalancerDescriptions"])
    return out


def main():
    ec2 = client("ec2", os.environ["MOTO"], "testing", "testing")
    moto_instances = [i["InstanceId"] for i in ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=2, MaxCount=2)["Instances"]]
    reference = scenario(client("elb", os.environ["MOTO"], "testing", "testing"), moto_instances)
    keel = scenario(client("elb", os.environ["ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"],
                           os.environ["AWS_SECRET_ACCESS_KEY"]), os.environ["INSTANCES"].split(","))
    sys.exit(compare(reference, keel, DOCUMENTED))


main()
