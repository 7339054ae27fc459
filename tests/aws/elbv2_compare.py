"""One boto3 elbv2 script against moto's server and against Keel: the parsed
results must be the same, apart from the differences documented below.

Environment: MOTO (moto_server's URL), ENDPOINT (Keel's AWS API),
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a Keel key), LB_PORT, TARGET
(a backend ip:port Keel can health-check). Prints the comparison; exits 1
on an undocumented difference.
"""
import os
import sys
import time

from compare import arn_shape, client, code_of, compare, pick

# Where Keel and moto answer differently on purpose, and why:
# (call, field) -> reason. Other fields of the same call still count.
DOCUMENTED = {
    ("create_load_balancer", "Scheme"):
        "moto leaves Scheme out of CreateLoadBalancer's answer; Keel gives AWS's default, internet-facing",
}


def scenario(elb, subnets, vpc):
    out = []
    rec = lambda name, value: out.append([name, value])
    target_ip, target_port = os.environ["TARGET"].rsplit(":", 1)

    lb = elb.create_load_balancer(Name="cmp-web", Subnets=subnets,
                                  Tags=[{"Key": "team", "Value": "blue"}])["LoadBalancers"][0]
    rec("create_load_balancer", dict(pick(lb, "LoadBalancerName", "Type", "Scheme", "IpAddressType"),
                                     arn=arn_shape(lb["LoadBalancerArn"])))
    lb_arn = lb["LoadBalancerArn"]
    elb.get_waiter("load_balancer_available").wait(LoadBalancerArns=[lb_arn])
    rec("state after the waiter", elb.describe_load_balancers(Names=["cmp-web"])["LoadBalancers"][0]["State"]["Code"])

    tg = elb.create_target_group(
        Name="cmp-app", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip",
        HealthCheckPath="/health", HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2,
        HealthyThresholdCount=2, UnhealthyThresholdCount=3, Matcher={"HttpCode": "200-299"},
    )["TargetGroups"][0]
    rec("create_target_group", dict(pick(
        tg, "TargetGroupName", "Protocol", "Port", "TargetType", "HealthCheckPath",
        "HealthCheckProtocol", "HealthCheckIntervalSeconds", "HealthCheckTimeoutSeconds",
        "HealthyThresholdCount", "UnhealthyThresholdCount", "Matcher.HttpCode"),
        arn=arn_shape(tg["TargetGroupArn"])))
    tg_arn = tg["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=tg_arn, Targets=[{"Id": target_ip, "Port": int(target_port)}])
    keys = {"stickiness.enabled", "stickiness.type", "stickiness.lb_cookie.duration_seconds",
            "deregistration_delay.timeout_seconds"}
    attrs = elb.modify_target_group_attributes(TargetGroupArn=tg_arn, Attributes=[
        {"Key": "stickiness.enabled", "Value": "true"},
        {"Key": "stickiness.type", "Value": "lb_cookie"},
        {"Key": "stickiness.lb_cookie.duration_seconds", "Value": "300"},
        {"Key": "deregistration_delay.timeout_seconds", "Value": "45"},
    ])["Attributes"]
    rec("modify_target_group_attributes", sorted((a["Key"], a["Value"]) for a in attrs if a["Key"] in keys))
    rec("describe_target_group_attributes", sorted(
        (a["Key"], a["Value"]) for a in elb.describe_target_group_attributes(TargetGroupArn=tg_arn)["Attributes"]
        if a["Key"] in keys))

    listener = elb.create_listener(
        LoadBalancerArn=lb_arn, Protocol="HTTP", Port=int(os.environ["LB_PORT"]),
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}],
    )["Listeners"][0]
    rec("create_listener", pick(listener, "Protocol", "DefaultActions[0].Type"))
    rule = elb.create_rule(
        ListenerArn=listener["ListenerArn"], Priority=10,
        Conditions=[{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/blog*"]}}],
        Actions=[{"Type": "fixed-response", "FixedResponseConfig": {
            "StatusCode": "503", "ContentType": "text/plain", "MessageBody": "later"}}],
    )["Rules"][0]
    rec("create_rule", pick(rule, "Priority", "IsDefault", "Conditions[0].Field",
                            "Conditions[0].PathPatternConfig.Values", "Actions[0].Type",
                            "Actions[0].FixedResponseConfig.StatusCode",
                            "Actions[0].FixedResponseConfig.MessageBody"))
    rec("describe_rules", [(r["Priority"], r["IsDefault"], [c["Field"] for c in r["Conditions"]],
                            [(a["Type"], arn_shape(a.get("TargetGroupArn", "")),
                              a.get("FixedResponseConfig", {}).get("StatusCode")) for a in r["Actions"]])
                           for r in elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]])
    rec("describe_listeners", [(l["Port"] == int(os.environ["LB_PORT"]), l["Protocol"]) for l in
                               elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]])
    rec("describe_target_groups", [t["TargetGroupName"] for t in
                                   elb.describe_target_groups(LoadBalancerArn=lb_arn)["TargetGroups"]])
    health = []
    for _ in range(100):
        health = [(h["Target"]["Id"], h["Target"]["Port"], h["TargetHealth"]["State"]) for h in
                  elb.describe_target_health(TargetGroupArn=tg_arn)["TargetHealthDescriptions"]]
        if [s for _, _, s in health] == ["healthy"]:
            break
        time.sleep(0.1)
    rec("describe_target_health", health)
    rec("describe_tags", elb.describe_tags(ResourceArns=[lb_arn])["TagDescriptions"][0]["Tags"])
    elb.add_tags(ResourceArns=[lb_arn, tg_arn], Tags=[{"Key": "stage", "Value": "blue"}])
    elb.remove_tags(ResourceArns=[lb_arn], TagKeys=["stage"])
    rec("remove_tags", [sorted(t["Key"] for t in d["Tags"]) for d in
                        elb.describe_tags(ResourceArns=[lb_arn, tg_arn])["TagDescriptions"]])

    changed = elb.modify_rule(RuleArn=rule["RuleArn"], Actions=[{"Type": "fixed-response", "FixedResponseConfig": {
        "StatusCode": "503", "ContentType": "text/plain", "MessageBody": "soon"}}])["Rules"][0]
    rec("modify_rule", (changed["RuleArn"] == rule["RuleArn"],
                        pick(changed, "Priority", "Conditions[0].Field", "Actions[0].FixedResponseConfig.MessageBody")))
    moved = elb.set_rule_priorities(RulePriorities=[{"RuleArn": rule["RuleArn"], "Priority": 15}])["Rules"]
    rec("set_rule_priorities", [(r["RuleArn"] == rule["RuleArn"], r["Priority"]) for r in moved])
    modified = elb.modify_target_group(TargetGroupArn=tg_arn, HealthyThresholdCount=4, HealthCheckPath="/ready",
                                       Matcher={"HttpCode": "200"})["TargetGroups"][0]
    rec("modify_target_group", pick(modified, "HealthyThresholdCount", "HealthCheckPath", "Matcher.HttpCode",
                                    "HealthCheckIntervalSeconds", "UnhealthyThresholdCount"))
    ml = elb.modify_listener(ListenerArn=listener["ListenerArn"],
                             DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}])["Listeners"][0]
    rec("modify_listener", (ml["ListenerArn"] == listener["ListenerArn"], pick(ml, "Protocol", "DefaultActions[0].Type")))
    first = elb.describe_load_balancers(PageSize=1)
    rec("describe_load_balancers page", ([l["LoadBalancerName"] for l in first["LoadBalancers"]], "NextMarker" in first))

    rec("unknown load balancer", code_of(lambda: elb.describe_load_balancers(Names=["nope"])))
    rec("duplicate target group", code_of(lambda: elb.create_target_group(
        Name="cmp-app", Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="ip")))
    rec("priority in use", code_of(lambda: elb.create_rule(
        ListenerArn=listener["ListenerArn"], Priority=15,
        Conditions=[{"Field": "path-pattern", "Values": ["/x"]}],
        Actions=[{"Type": "forward", "TargetGroupArn": tg_arn}])))
    rec("target group in use", code_of(lambda: elb.delete_target_group(TargetGroupArn=tg_arn)))
    rec("unknown listener", code_of(lambda: elb.describe_rules(
        ListenerArn=listener["ListenerArn"].replace("/cmp-web/", "/nope/"))))

    elb.delete_rule(RuleArn=rule["RuleArn"])
    elb.delete_listener(ListenerArn=listener["ListenerArn"])
    elb.delete_load_balancer(LoadBalancerArn=lb_arn)
    elb.get_waiter("load_balancers_deleted").wait(LoadBalancerArns=[lb_arn])
    elb.delete_target_group(TargetGroupArn=tg_arn)
    rec("after delete", code_of(lambda: elb.describe_load_balancers(Names=["cmp-web"])))
    rec("target groups left", [t["TargetGroupName"] for t in elb.describe_target_groups()["TargetGroups"]])
    return out


def main():
    moto_ec2 = client("ec2", os.environ["MOTO"], "testing", "testing")
    vpc = moto_ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [moto_ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-east-1{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    reference = scenario(client("elbv2", os.environ["MOTO"], "testing", "testing"), subnets, vpc)
    keel = scenario(client("elbv2", os.environ["ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"],
                           os.environ["AWS_SECRET_ACCESS_KEY"]), ["subnet-1", "subnet-2"], "vpc-1")
    sys.exit(compare(reference, keel, DOCUMENTED))


main()
