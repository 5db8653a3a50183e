"""Prepares a moto S3 server that enforces SigV4 for tests/checkpoint/s3_moto_test.cpp.

The server is started with INITIAL_NO_AUTH_ACTION_COUNT=4: exactly these four calls pass unsigned
(any key), every later request must carry a valid signature of a key that IAM knows. Prints
"<access key id> <secret access key>" of a user allowed s3:* on everything.
Usage: moto_setup.py <endpoint> <bucket>
"""
import json
import sys

import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
common = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **common)
iam.create_user(UserName="dreamlora-test")  # 1
iam.put_user_policy(  # 2
    UserName="dreamlora-test", PolicyName="s3-all",
    PolicyDocument=json.dumps({"Version": "2012-10-17",
                               "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="dreamlora-test")["AccessKey"]  # 3
boto3.client("s3", **common).create_bucket(Bucket=bucket)  # 4
print(key["AccessKeyId"], key["SecretAccessKey"])
