"""The ALB seed's case through boto3's elbv2 client, against Keel.

Environment: ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, LB_PORT,
SITE and BLOG (backend ip:port). Phase "create" builds the load balancer
and prints its ARNs as JSON; phase "errors" checks refusals; phase
"delete" removes everything.
"""
import datetime
import json
import os
import sys
import time

import boto3
from botocore.config import Config

from compare import code_of


def client(**overrides):
    args = dict(
        endpoint_url=os.environ["ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}),
    )
    args.update(overrides)
    return boto3.client("elbv2", **args)


def target(addr):
    ip, port = addr.rsplit(":", 1)
    return {"Id": ip, "Port": int(port)}


def create():
    elb = client()
    asked = datetime.datetime.now(datetime.timezone.utc)
    lb = elb.create_load_balancer(Name="web", Subnets=["subnet-1"], Tags=[{"Key": "team", "Value": "blue"}])
    lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
    assert lb["LoadBalancers"][0]["State"]["Code"] == "active"
    # Its creation time is the commit's, and stays what it was.
    created = lb["LoadBalancers"][0]["CreatedTime"]
    assert abs((created - asked).total_seconds()) < 2, (created, asked)
    time.sleep(1.1)
    again = elb.describe_load_balancers(Names=["web"])["LoadBalancers"][0]
    assert again["CreatedTime"] == created, (again["CreatedTime"], created)
    # A network load balancer is reported as one.
    nlb = elb.create_load_balancer(Name="edge", Type="network", Subnets=["subnet-1"])
    assert nlb["LoadBalancers"][0]["Type"] == "network"
    assert elb.describe_load_balancers(Names=["edge"])["LoadBalancers"][0]["Type"] == "network"
    assert elb.describe_load_balancers(Names=["web"])["LoadBalancers"][0]["Type"] == "application"
    elb.delete_load_balancer(LoadBalancerArn=nlb["LoadBalancers"][0]["LoadBalancerArn"])
    elb.get_waiter("load_balancer_available").wait(LoadBalancerArns=[lb_arn])
    # An instance target group: its target is an ID from Keel's instance registry.
    site = elb.create_target_group(
        Name="site", Protocol="HTTP", Port=80, VpcId="vpc-1", TargetType="instance",
        HealthCheckPath="/health", HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2,
        HealthyThresholdCount=2, UnhealthyThresholdCount=2, Matcher={"HttpCode": "200-299"},
    )["TargetGroups"][0]
    blog = elb.create_target_group(Name="blog", Protocol="HTTP", Port=80, VpcId="vpc-1", TargetType="ip")["TargetGroups"][0]
    assert site["HealthCheckPath"] == "/health", site
    assert site["Matcher"]["HttpCode"] == "200-299", site
    site_port = int(os.environ["SITE"].rsplit(":", 1)[1])
    elb.register_targets(TargetGroupArn=site["TargetGroupArn"],
                         Targets=[{"Id": os.environ["SITE_INSTANCE"], "Port": site_port}])
    attrs = elb.modify_target_group_attributes(TargetGroupArn=site["TargetGroupArn"], Attributes=[
        {"Key": "stickiness.enabled", "Value": "true"},
        {"Key": "stickiness.type", "Value": "lb_cookie"},
        {"Key": "stickiness.lb_cookie.duration_seconds", "Value": "120"},
        {"Key": "deregistration_delay.timeout_seconds", "Value": "10"},
    ])["Attributes"]
    described = {a["Key"]: a["Value"] for a in elb.describe_target_group_attributes(
        TargetGroupArn=site["TargetGroupArn"])["Attributes"]}
    assert {a["Key"]: a["Value"] for a in attrs} == described, (attrs, described)
    assert described["stickiness.enabled"] == "true" and described["stickiness.lb_cookie.duration_seconds"] == "120", described
    assert described["deregistration_delay.timeout_seconds"] == "10", described
    elb.register_targets(TargetGroupArn=blog["TargetGroupArn"], Targets=[target(os.environ["BLOG"])])
    listener = elb.create_listener(
        LoadBalancerArn=lb_arn, Protocol="HTTP", Port=int(os.environ["LB_PORT"]),
        DefaultActions=[{"Type": "forward", "TargetGroupArn": site["TargetGroupArn"]}],
    )["Listeners"][0]
    # The new condition encoding, and the legacy one libcloud sends.
    elb.create_rule(
        ListenerArn=listener["ListenerArn"], Priority=10,
        Conditions=[{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/blog*"]}}],
        Actions=[{"Type": "forward", "TargetGroupArn": blog["TargetGroupArn"]}],
    )
    elb.create_rule(
        ListenerArn=listener["ListenerArn"], Priority=20,
        Conditions=[{"Field": "path-pattern", "Values": ["/news*"]}],
        Actions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503", "ContentType": "text/plain", "MessageBody": "later"}}],
    )
    # The waiter sleeps 15 s between polls; look more often first.
    for _ in range(100):
        states = [h["TargetHealth"]["State"] for h in elb.describe_target_health(
            TargetGroupArn=site["TargetGroupArn"])["TargetHealthDescriptions"]]
        if states == ["healthy"]:
            break
        time.sleep(0.1)
    elb.get_waiter("target_in_service").wait(TargetGroupArn=site["TargetGroupArn"])
    health = elb.describe_target_health(TargetGroupArn=site["TargetGroupArn"])["TargetHealthDescriptions"]
    assert [h["TargetHealth"]["State"] for h in health] == ["healthy"], health
    assert health[0]["Target"] == {"Id": os.environ["SITE_INSTANCE"], "Port": site_port}, health
    rules = elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
    assert [r["Priority"] for r in rules] == ["10", "20", "default"], rules
    tags = elb.describe_tags(ResourceArns=[lb_arn])["TagDescriptions"][0]["Tags"]
    assert tags == [{"Key": "team", "Value": "blue"}], tags
    elb.add_tags(ResourceArns=[lb_arn, site["TargetGroupArn"]], Tags=[{"Key": "stage", "Value": "1"}])
    elb.remove_tags(ResourceArns=[lb_arn], TagKeys=["stage", "team"])
    both = elb.describe_tags(ResourceArns=[lb_arn, site["TargetGroupArn"]])["TagDescriptions"]
    assert [d["Tags"] for d in both] == [[], [{"Key": "stage", "Value": "1"}]], both
    elb.add_tags(ResourceArns=[lb_arn], Tags=[{"Key": "team", "Value": "blue"}])
    names = [t["TargetGroupName"] for t in elb.describe_target_groups(LoadBalancerArn=lb_arn)["TargetGroups"]]
    assert sorted(names) == ["blog", "site"], names
    listeners = elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]
    assert [l["Port"] for l in listeners] == [int(os.environ["LB_PORT"])], listeners
    print(json.dumps({"lb": lb_arn, "listener": listener["ListenerArn"],
                      "site": site["TargetGroupArn"], "blog": blog["TargetGroupArn"]}))


def modify():
    elb = client()
    lb_arn = elb.describe_load_balancers(Names=["web"])["LoadBalancers"][0]["LoadBalancerArn"]
    listener = elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"][0]["ListenerArn"]
    site = elb.describe_target_groups(Names=["site"])["TargetGroups"][0]["TargetGroupArn"]
    blog = elb.describe_target_groups(Names=["blog"])["TargetGroups"][0]["TargetGroupArn"]
    by_priority = {r["Priority"]: r for r in elb.describe_rules(ListenerArn=listener)["Rules"]}
    # ModifyRule: new actions, same conditions, same ARN.
    news = by_priority["20"]["RuleArn"]
    changed = elb.modify_rule(RuleArn=news, Actions=[{"Type": "fixed-response", "FixedResponseConfig": {
        "StatusCode": "503", "ContentType": "text/plain", "MessageBody": "soon"}}])["Rules"][0]
    assert changed["RuleArn"] == news, changed
    assert changed["Actions"][0]["FixedResponseConfig"]["MessageBody"] == "soon", changed
    assert changed["Conditions"][0]["Field"] == "path-pattern", changed
    # SetRulePriorities: the blog rule moves behind the news one and keeps its ARN.
    blog_rule = by_priority["10"]["RuleArn"]
    moved = elb.set_rule_priorities(RulePriorities=[{"RuleArn": blog_rule, "Priority": 30}])["Rules"]
    assert [(r["RuleArn"], r["Priority"]) for r in moved] == [(blog_rule, "30")], moved
    rules = elb.describe_rules(ListenerArn=listener)["Rules"]
    assert [(r["Priority"], r["RuleArn"]) for r in rules][:2] == [("20", news), ("30", blog_rule)], rules
    assert elb.describe_rules(RuleArns=[blog_rule])["Rules"][0]["Priority"] == "30"
    # ModifyTargetGroup: health check settings.
    tg = elb.modify_target_group(TargetGroupArn=site, HealthyThresholdCount=3, HealthCheckIntervalSeconds=6,
                                 Matcher={"HttpCode": "200"})["TargetGroups"][0]
    assert (tg["HealthyThresholdCount"], tg["HealthCheckIntervalSeconds"], tg["Matcher"]["HttpCode"],
            tg["HealthCheckPath"]) == (3, 6, "200", "/health"), tg
    # ModifyListener: the default action goes to the blog, then back.
    l = elb.modify_listener(ListenerArn=listener, DefaultActions=[{"Type": "forward", "TargetGroupArn": blog}])["Listeners"][0]
    assert l["DefaultActions"][0]["TargetGroupArn"] == blog, l
    l = elb.modify_listener(ListenerArn=listener, DefaultActions=[{"Type": "forward", "TargetGroupArn": site}])["Listeners"][0]
    assert l["ListenerArn"] == listener and l["DefaultActions"][0]["TargetGroupArn"] == site, l
    # Paging: one target group per page.
    first = elb.describe_target_groups(PageSize=1)
    second = elb.describe_target_groups(PageSize=1, Marker=first["NextMarker"])
    assert [t["TargetGroupName"] for t in first["TargetGroups"] + second["TargetGroups"]] == ["blog", "site"]
    assert "NextMarker" not in second, second
    pages = elb.get_paginator("describe_target_groups").paginate(PaginationConfig={"PageSize": 1})
    assert [t["TargetGroupName"] for page in pages for t in page["TargetGroups"]] == ["blog", "site"]
    # Refused: a port change (the ARN derives from it), a priority in use, an unknown rule.
    assert code_of(lambda: elb.modify_listener(ListenerArn=listener, Port=1)) == "ValidationError"
    assert code_of(lambda: elb.set_rule_priorities(RulePriorities=[{"RuleArn": blog_rule, "Priority": 20}])) == "PriorityInUse"
    assert code_of(lambda: elb.modify_rule(RuleArn=blog_rule[:-4] + "0000", Conditions=[
        {"Field": "path-pattern", "Values": ["/x"]}])) == "RuleNotFound"
    print("modified")


def errors():
    elb = client()
    lb_arn = elb.describe_load_balancers(Names=["web"])["LoadBalancers"][0]["LoadBalancerArn"]
    bad_secret = client(aws_secret_access_key="x" * 40)
    assert code_of(lambda: bad_secret.describe_load_balancers()) == "SignatureDoesNotMatch"
    unknown = client(aws_access_key_id="AKIAUNKNOWN000000000")
    assert code_of(lambda: unknown.describe_load_balancers()) == "InvalidClientTokenId"
    other_region = client(region_name="eu-west-1")
    assert code_of(lambda: other_region.describe_load_balancers()) == "SignatureDoesNotMatch"
    assert code_of(lambda: elb.describe_load_balancers(Names=["nope"])) == "LoadBalancerNotFound"
    assert code_of(lambda: elb.create_target_group(Name="site", Protocol="HTTP", Port=80, VpcId="v")) == "DuplicateTargetGroupName"
    assert code_of(lambda: elb.register_targets(
        TargetGroupArn=elb.describe_target_groups(Names=["site"])["TargetGroups"][0]["TargetGroupArn"],
        Targets=[{"Id": "i-0123456789", "Port": 80}])) == "InvalidTarget"
    assert code_of(lambda: elb.register_targets(
        TargetGroupArn=elb.describe_target_groups(Names=["blog"])["TargetGroups"][0]["TargetGroupArn"],
        Targets=[{"Id": os.environ["SITE_INSTANCE"], "Port": 80}])) == "InvalidTarget"
    assert code_of(lambda: elb.modify_target_group_attributes(
        TargetGroupArn=elb.describe_target_groups(Names=["site"])["TargetGroups"][0]["TargetGroupArn"],
        Attributes=[{"Key": "stickiness.lb_cookie.duration_seconds", "Value": "0"}])) == "InvalidConfigurationRequest"
    listener = elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"][0]["ListenerArn"]
    assert code_of(lambda: elb.create_rule(
        ListenerArn=listener, Priority=20,
        Conditions=[{"Field": "path-pattern", "Values": ["/x"]}],
        Actions=[{"Type": "forward", "TargetGroupArn": elb.describe_target_groups(Names=["blog"])["TargetGroups"][0]["TargetGroupArn"]}],
    )) == "PriorityInUse"
    site = elb.describe_target_groups(Names=["site"])["TargetGroups"][0]["TargetGroupArn"]
    assert code_of(lambda: elb.delete_target_group(TargetGroupArn=site)) == "ResourceInUse"
    print("errors ok")


def delete():
    elb = client()
    lb_arn = elb.describe_load_balancers(Names=["web"])["LoadBalancers"][0]["LoadBalancerArn"]
    for l in elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]:
        for r in elb.describe_rules(ListenerArn=l["ListenerArn"])["Rules"]:
            if not r["IsDefault"]:
                elb.delete_rule(RuleArn=r["RuleArn"])
        elb.delete_listener(ListenerArn=l["ListenerArn"])
    elb.delete_load_balancer(LoadBalancerArn=lb_arn)
    for tg in elb.describe_target_groups()["TargetGroups"]:
        elb.delete_target_group(TargetGroupArn=tg["TargetGroupArn"])
    elb.get_waiter("load_balancers_deleted").wait(LoadBalancerArns=[lb_arn])
    print("deleted")


{"create": create, "modify": modify, "errors": errors, "delete": delete}[sys.argv[1]]()
