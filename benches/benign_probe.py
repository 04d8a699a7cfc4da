#!/usr/bin/env python3
"""Benign services the threat model never generates: how often does a model alert on them?

Real networks resolve many names that look random: reverse lookups, DKIM selectors of bulk
senders, cloud endpoints named by generated tokens, workstation names of a directory, hash
blocklists. The look-alike families of `src/data/threats/benign.rs` teach the model some of them;
this probe asks about services that are in none of those families, as a model would meet them
on a new network.

For each service, a burst of N distinct names (N = 1, 10, 60) is added to the busiest hours of
three benign hosts of the development log, each batch is scored through a running service's
/apply, and the share of the service's names alerting (>= 0.5) is printed per model. The names
follow each service's public naming scheme (documented by the vendor or visible in any resolver
log); the random parts are drawn with a fixed seed.

Usage: benign_probe.py --url http://127.0.0.1:5000 --token TOKEN --models dnsexfil_v4[,other]
       [--dev tests/fixtures/dev] [--sizes 1,10,60]
Only the Python standard library is used.
"""
import argparse, collections, random, string

# The same busy hours and the same /apply call as the mixed-host probe beside this file.
from mixed_host_probe import busy_benign_hours, score

HEX = "0123456789abcdef"
LOWER36 = string.ascii_lowercase + string.digits
B32 = "abcdefghijklmnopqrstuvwxyz234567"


def tok(r, alphabet, n):
    return "".join(r.choice(alphabet) for _ in range(n))


def ipv6_ptr(r):
    # A server logging its IPv6 clients by name: 32 reversed nibbles under ip6.arpa.
    prefix = "2a01:4f8:c17:"  # one provider's block, as a server sees many clients from few blocks
    nibbles = prefix.replace(":", "").ljust(12, "0") + tok(r, HEX, 20)
    return ".".join(reversed(nibbles)) + ".ip6.arpa"


def ipv4_ptr(r):
    return f"{r.randint(1, 254)}.{r.randint(0, 255)}.{r.choice([51, 52, 34, 35, 104])}.{r.randint(3, 223)}.in-addr.arpa"


def ses_dkim(r):
    # Amazon SES Easy DKIM: three 32-character tokens per sending domain.
    return f"{tok(r, B32[:26] + '234567', 32)}._domainkey.{r.choice(['mail-news.example-shop.com', 'notify.bank-example.co.uk', 'updates.saas-example.io'])}"


def spamhaus_hbl(r):
    # Spamhaus Hash Blocklist via DQS: base32 of a SHA-1 of an e-mail address or file.
    return f"{tok(r, B32, 32)}._cw.{tok(r, LOWER36, 26)}.hbl.dq.spamhaus.net"


def eks_endpoint(r):
    # An EKS cluster's API server: 32 upper-case hex characters (resolvers log lower case).
    return f"{tok(r, HEX, 32)}.gr7.{r.choice(['us-east-1', 'eu-west-1'])}.eks.amazonaws.com"


def rds_endpoint(r):
    return f"{r.choice(['orders', 'users', 'billing', 'analytics'])}-{r.choice(['prod', 'db', 'replica'])}.{tok(r, LOWER36, 12)}.{r.choice(['us-east-1', 'eu-central-1'])}.rds.amazonaws.com"


def iot_endpoint(r):
    return f"{tok(r, LOWER36, 14)}-ats.iot.{r.choice(['us-east-1', 'eu-west-1'])}.amazonaws.com"


def s3_bucket(r):
    account = "".join(r.choice(string.digits) for _ in range(12))
    return r.choice([
        f"cf-templates-{tok(r, LOWER36, 13)}-us-east-1.s3.amazonaws.com",
        f"aws-logs-{account}-eu-west-1.s3.eu-west-1.amazonaws.com",
        f"{tok(r, LOWER36, 20)}.s3.us-west-2.amazonaws.com",
    ])


def google_oauth_client(r):
    return f"{''.join(r.choice(string.digits) for _ in range(12))}-{tok(r, LOWER36, 32)}.apps.googleusercontent.com"


def cloud_run(r):
    return f"{r.choice(['api', 'web', 'worker', 'checkout'])}-{tok(r, LOWER36, 10)}-{r.choice(['uc', 'ew', 'an'])}.a.run.app"


def azure_front_door(r):
    return f"{r.choice(['portal', 'shop', 'api', 'static'])}-{tok(r, LOWER36, 16)}.z01.azurefd.net"


def vercel(r):
    return f"{r.choice(['docs', 'landing', 'dashboard'])}-{tok(r, LOWER36, 9)}-{r.choice(['acme-team', 'frontend'])}.vercel.app"


def netflix_oca(r):
    return f"ipv4-c{r.randint(1, 250):03d}-{r.choice(['fra', 'lhr', 'ams', 'iad'])}{r.randint(1, 9):03d}-{r.choice(['ix', 'dtag-isp', 'vodafone-isp'])}.1.oca.nflxvideo.net"


def dropbox_content(r):
    return f"uc{tok(r, LOWER36, 26)}.dl.dropboxusercontent.com"


def duo_api(r):
    return f"api-{tok(r, HEX, 8)}.duosecurity.com"


def tailscale(r):
    return f"{r.choice(['laptop', 'build', 'nas', 'pi'])}-{r.randint(1, 40)}.tail{tok(r, HEX, 6)}.ts.net"


def ad_workstations(r):
    # A file server or domain controller resolving Windows' generated computer names.
    return f"desktop-{tok(r, string.ascii_lowercase + string.digits, 7)}.corp.example.com"


def ad_srv(r):
    site = r.choice(["hq", "branch-1", "dc-east"])
    return r.choice([
        "_ldap._tcp.dc._msdcs.corp.example.com",
        f"_ldap._tcp.{site}._sites.dc._msdcs.corp.example.com",
        "_kerberos._tcp.corp.example.com",
        f"_gc._tcp.{site}._sites.corp.example.com",
    ])


def delivery_optimization(r):
    return f"{r.randint(1, 20)}.tlu.dl.delivery.mp.microsoft.com" if r.random() < 0.3 else \
        f"{tok(r, HEX, 16)}.dl.delivery.mp.microsoft.com"


def sharepoint_tenant(r):
    return f"{r.choice(['contoso', 'fabrikam', 'northwind'])}{r.choice(['', '-my', '-admin'])}.sharepoint.com"


def apple_push(r):
    return f"{r.randint(1, 50)}-courier.push.apple.com" if r.random() < 0.5 else \
        f"p{r.randint(1, 180):02d}-{r.choice(['caldav', 'contacts', 'keyvalueservice', 'ckdatabase'])}.icloud.com"


def steam_cache(r):
    return f"cache{r.randint(1, 30)}-{r.choice(['fra1', 'ams1', 'lhr1'])}.steamcontent.com"


def datadog_agent(r):
    return f"{r.randint(6, 7)}-{r.randint(40, 60)}-{r.randint(0, 3)}-app.agent.datadoghq.com"


def netlify(r):
    return f"{tok(r, HEX, 24)}--{r.choice(['docs-site', 'marketing'])}.netlify.app"


SERVICES = {
    "ip6.arpa PTR": ipv6_ptr,
    "in-addr.arpa PTR": ipv4_ptr,
    "SES DKIM": ses_dkim,
    "Spamhaus HBL": spamhaus_hbl,
    "EKS endpoint": eks_endpoint,
    "RDS endpoint": rds_endpoint,
    "IoT endpoint": iot_endpoint,
    "S3 bucket": s3_bucket,
    "Google OAuth client": google_oauth_client,
    "Cloud Run": cloud_run,
    "Azure Front Door": azure_front_door,
    "Vercel preview": vercel,
    "Netlify deploy": netlify,
    "Netflix OCA": netflix_oca,
    "Dropbox content": dropbox_content,
    "Duo API": duo_api,
    "Tailscale": tailscale,
    "AD workstations": ad_workstations,
    "AD SRV": ad_srv,
    "Delivery Optimization": delivery_optimization,
    "SharePoint tenant": sharepoint_tenant,
    "Apple push/iCloud": apple_push,
    "Steam cache": steam_cache,
    "Datadog agent": datadog_agent,
}


def batch(src, queries, generate, n, seed):
    r = random.Random(seed)
    injected = []
    for _ in range(50 * n):  # some services have few distinct names
        if len(injected) == n:
            break
        name = generate(r)
        if name not in injected:
            injected.append(name)
    seen, rows = collections.Counter(), []
    for q in injected + queries:
        seen[q] += 1
        if seen[q] < 10:
            rows.append((src, q, seen[q]))
    return rows, set(injected)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--models", required=True)
    ap.add_argument("--dev", default="tests/fixtures/dev", help="the development log (events.csv, labels.csv)")
    ap.add_argument("--sizes", default="1,10,60")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    hosts = busy_benign_hours(a.dev)
    models = a.models.split(",")
    print("share of a service's names alerting, by names in the burst:", ", ".join(map(str, sizes)))
    print("| service | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    totals = {m: [0, 0] for m in models}
    for service, generate in SERVICES.items():
        cells = []
        for model in models:
            shares = []
            for n in sizes:
                alerts = names = 0
                for h, (src, queries) in enumerate(hosts):
                    rows, injected = batch(src, queries, generate, n, seed=h * 1000 + n)
                    for row in score(a.url, a.token, model, rows):
                        p = next(v for k, v in row.items() if k.endswith("_proba"))
                        if row["query"] in injected and p:
                            names += 1
                            alerts += float(p) >= 0.5
                shares.append(f"{alerts / names:.0%}")
                totals[model][0] += alerts
                totals[model][1] += names
            cells.append(" / ".join(shares))
        print(f"| {service} | " + " | ".join(cells) + " |")
    print("| all services (names alerting / names) | " +
          " | ".join(f"{t[0]} / {t[1]}" for t in totals.values()) + " |")


if __name__ == "__main__":
    main()
