#!/usr/bin/env bash
# The AWS CLI (v1, from PyPI) against Keel's ELBv2 API: a load balancer, a
# target group with one target, a listener; then everything deleted.
#
# Environment: AWS (the aws executable), ENDPOINT, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, LB_PORT, TARGET (backend ip:port).
# Phase "create" prints "ready"; phase "delete" prints "deleted".
set -euo pipefail
aws() { "$AWS" --endpoint-url "$ENDPOINT" --region us-east-1 --output text "$@"; }

case "$1" in
create)
  lb=$(aws elbv2 create-load-balancer --name cli-web --subnets subnet-1 subnet-2 \
    --tags Key=owner,Value=cli --query 'LoadBalancers[0].LoadBalancerArn')
  aws elbv2 wait load-balancer-available --load-balancer-arns "$lb"
  tg=$(aws elbv2 create-target-group --name cli-app --protocol HTTP --port 80 --vpc-id vpc-1 \
    --health-check-path /health --health-check-interval-seconds 5 \
    --query 'TargetGroups[0].TargetGroupArn')
  aws elbv2 register-targets --target-group-arn "$tg" \
    --targets "Id=${TARGET%:*},Port=${TARGET##*:}"
  aws elbv2 create-listener --load-balancer-arn "$lb" --protocol HTTP --port "$LB_PORT" \
    --default-actions "Type=forward,TargetGroupArn=$tg" --query 'Listeners[0].ListenerArn' >/dev/null
  # The waiter sleeps 15 s between polls: look more often first.
  for _ in $(seq 100); do
    state=$(aws elbv2 describe-target-health --target-group-arn "$tg" \
      --query 'TargetHealthDescriptions[0].TargetHealth.State')
    [[ "$state" == healthy ]] && break
    sleep 0.2
  done
  aws elbv2 wait target-in-service --target-group-arn "$tg"
  dns=$(aws elbv2 describe-load-balancers --names cli-web --query 'LoadBalancers[0].DNSName')
  owner=$(aws elbv2 describe-tags --resource-arns "$lb" --query 'TagDescriptions[0].Tags[0].Value')
  [[ "$owner" == cli ]] || { echo "tag owner=$owner" >&2; exit 1; }
  echo "ready $dns"
  ;;
delete)
  lb=$(aws elbv2 describe-load-balancers --names cli-web --query 'LoadBalancers[0].LoadBalancerArn')
  for l in $(aws elbv2 describe-listeners --load-balancer-arn "$lb" --query 'Listeners[].ListenerArn'); do
    aws elbv2 delete-listener --listener-arn "$l"
  done
  aws elbv2 delete-load-balancer --load-balancer-arn "$lb"
  aws elbv2 wait load-balancers-deleted --load-balancer-arns "$lb"
  tg=$(aws elbv2 describe-target-groups --names cli-app --query 'TargetGroups[0].TargetGroupArn')
  aws elbv2 delete-target-group --target-group-arn "$tg"
  # What is gone is reported the way the CLI's users script against.
  err=$(mktemp)
  trap 'rm -f "$err"' EXIT
  if aws elbv2 describe-load-balancers --names cli-web 2>"$err"; then
    echo "cli-web still exists" >&2; exit 1
  fi
  grep -q LoadBalancerNotFound "$err" || { cat "$err" >&2; exit 1; }
  echo deleted
  ;;
esac
