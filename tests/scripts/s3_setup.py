"""Fill a moto S3 server that enforces authentication (tests/src/s3.rs).

Usage: s3_setup.py ENDPOINT BUCKET SPEC.json  (run with the moto virtualenv's python)

The server starts with INITIAL_NO_AUTH_ACTION_COUNT=3: the first three requests (below) make an
administrator with an access key; every later request, ours and disksynth's, is checked by moto
(IAM access keys, SigV4 signatures recomputed with botocore, IAM policies).

SPEC.json: {"objects": {"KEY": "LOCAL PATH", ...}, "presign": ["KEY", ...]}
Prints JSON: the admin's and a no-permission user's keys, temporary credentials (with a session
token) of a role that may read objects, and the presigned GET URLs.
"""

import json
import sys

import boto3
from botocore.config import Config

endpoint, bucket, spec_path = sys.argv[1:4]
with open(spec_path, encoding="utf-8") as f:
    spec = json.load(f)

REGION = "us-east-1"


def client(service, key_id, secret):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


# The three unauthenticated actions (any key id is accepted for them).
iam = client("iam", "bootstrap", "bootstrap")
iam.create_user(UserName="admin")
iam.put_user_policy(
    UserName="admin",
    PolicyName="all",
    PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    ),
)
admin = iam.create_access_key(UserName="admin")["AccessKey"]
ak, sk = admin["AccessKeyId"], admin["SecretAccessKey"]

# From here on every request is authenticated.
iam = client("iam", ak, sk)
iam.create_user(UserName="nobody")
nobody = iam.create_access_key(UserName="nobody")["AccessKey"]

s3 = client("s3", ak, sk)
s3.create_bucket(Bucket=bucket)
s3.put_public_access_block(
    Bucket=bucket,
    PublicAccessBlockConfiguration={
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    },
)
for key, path in spec["objects"].items():
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key=key, Body=f)

# Temporary credentials (with a session token) from an assumed role that may read objects.
role = iam.create_role(
    RoleName="reader",
    AssumeRolePolicyDocument=json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
        }
    ),
)["Role"]
iam.put_role_policy(
    RoleName="reader",
    PolicyName="read",
    PolicyDocument=json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
        }
    ),
)
session = client("sts", ak, sk).assume_role(RoleArn=role["Arn"], RoleSessionName="disksynth-test")[
    "Credentials"
]

presigned = {
    key: s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600
    )
    for key in spec.get("presign", [])
}

json.dump(
    {
        "access_key_id": ak,
        "secret_access_key": sk,
        "nobody_access_key_id": nobody["AccessKeyId"],
        "nobody_secret_access_key": nobody["SecretAccessKey"],
        "session_access_key_id": session["AccessKeyId"],
        "session_secret_access_key": session["SecretAccessKey"],
        "session_token": session["SessionToken"],
        "presigned": presigned,
    },
    sys.stdout,
)
