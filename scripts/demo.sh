#!/usr/bin/env bash
# `make demo`: with the service running (`make run` in another terminal), place three
# orders against the demo catalogue (app/seed.py), each as its customer (the tokens
# `make run` wrote under var/credentials), and show how each one ended:
#   1. user 1 buys coffee beans with the welcome coupon      -> completes
#   2. user 1 buys more limited mugs than are in stock       -> fails at the stock step
#   3. user 2 (balance 300) buys wireless earbuds             -> fails at the balance step,
#                                                               stock given back
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The port and folders `make run` chose (it writes them there).
env_file=${SAGA_ENV_FILE:-${VAR_DIR:-$root/var}/saga.env}
if [[ -z ${PORT:-} && -r $env_file ]]; then
    PORT=$(sed -n 's/^PORT=//p' "$env_file")
    VAR_DIR=${VAR_DIR:-$(sed -n 's/^VAR_DIR=//p' "$env_file")}
fi
api="http://127.0.0.1:${PORT:-8000}"
python="$root/.venv/bin/python"
[[ -x $python ]] || python=python3
# The local credentials `make run` wrote: each customer acts as itself.
credentials=${VAR_DIR:-$root/var}/credentials
for who in customer-1 customer-2; do
    [[ -r $credentials/$who.header ]] \
        || { echo "no $credentials/$who.header: start the service with 'make run'" >&2; exit 1; }
done
# curl reads the Authorization header from the file: the token never is on a command line.
as() { printf '@%s' "$credentials/$1.header"; }

if ! curl -fsS "$api/healthz" >/dev/null 2>&1; then
    echo "the service does not answer at $api; start it first with 'make run'" >&2
    exit 1
fi

products=$(curl -fsS "$api/products")
# The id of the product with this name, from GET /products.
product_id() {
    NAME=$1 "$python" -c '
import json, os, sys
name = os.environ["NAME"]
ids = [p["id"] for p in json.load(sys.stdin) if p["name"] == name]
if not ids:
    sys.exit(f"no product named {name!r}: load the demo catalogue with python -m app.seed")
print(ids[0])' <<<"$products"
}
# The stock of a product, so the second order always asks for more than there is.
product_stock() {
    ID=$1 "$python" -c '
import json, os, sys
print(next(p["stock"] for p in json.load(sys.stdin) if p["id"] == int(os.environ["ID"])))
' <<<"$products"
}

beans=$(product_id "Coffee beans 1kg")
earbuds=$(product_id "Wireless earbuds")
mug=$(product_id "Limited edition mug")
too_many=$(( $(product_stock "$mug") + 1 ))

# User 1's first unused coupon, if any is left (a second demo run has used it).
coupon=$(curl -fsS -H "$(as customer-1)" "$api/users/1/coupons" | "$python" -c '
import json, sys
unused = [c["id"] for c in json.load(sys.stdin) if c["status"] == "UNUSED"]
print(unused[0] if unused else "")')
coupon_field=""
[[ -n $coupon ]] && coupon_field=", \"issued_coupon_id\": $coupon"

place() {
    local who=$1 label=$2 body=$3 response id
    response=$(curl -sS -X POST "$api/orders" -H "$(as "$who")" \
        -H 'Content-Type: application/json' -d "$body")
    id=$("$python" -c 'import json, sys; print(json.load(sys.stdin).get("order_id", ""))' \
         <<<"$response" 2>/dev/null || true)
    if [[ -z $id ]]; then
        echo "could not place the order ($label): $response" >&2
        exit 1
    fi
    echo "placed order $id: $label" >&2
    echo "$id"
}

ok=$(place customer-1 "user 1, 1 x coffee beans${coupon:+ with coupon $coupon}" \
    "{\"items\": [{\"product_id\": $beans, \"quantity\": 1}]$coupon_field}")
no_stock=$(place customer-1 "user 1, $too_many x limited mug (out of stock)" \
    "{\"items\": [{\"product_id\": $mug, \"quantity\": $too_many}]}")
no_money=$(place customer-2 "user 2, 1 x wireless earbuds (balance too low)" \
    "{\"items\": [{\"product_id\": $earbuds, \"quantity\": 1}]}")

echo "waiting for the sagas to finish..." >&2
declare -A owner=([$ok]=customer-1 [$no_stock]=customer-1 [$no_money]=customer-2)
for id in "$ok" "$no_stock" "$no_money"; do
    for _ in $(seq 50); do
        status=$(curl -fsS -H "$(as "${owner[$id]}")" "$api/orders/$id" | "$python" -c \
            'import json, sys; print(json.load(sys.stdin)["status"])')
        [[ $status == PENDING || $status == COMPENSATING ]] || break
        sleep 0.2
    done
done

for id in "$ok" "$no_stock" "$no_money"; do
    echo
    echo "GET /orders/$id"
    curl -fsS -H "$(as "${owner[$id]}")" "$api/orders/$id" | "$python" -m json.tool
done
