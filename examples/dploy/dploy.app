# A dploy project: `cd examples/dploy && autodeployer run --dploy` (the token comes from GITHUB_TOKEN or .pat).
marathon_url: https://leader.mesos/service/marathon   # MARATHON_URL in the environment wins
app_name: shop                                        # apps carry the label DPLOY=shop
repo_url: https://github.com/acme/shop                # where specs/*.json live, on trigger_branch
public_node: 52.37.239.156                            # the webhook goes to http://<public_node>:<PORT>/dploy
trigger_branch: dcos                                  # the default
