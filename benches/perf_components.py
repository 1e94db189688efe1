"""Groups `perf script` call stacks (recorded with --call-graph dwarf) under a root frame by the search
components they pass through, and prints each group's share of the samples under that root.

    perf script -i perf.data | python3 benches/perf_components.py search_with

Used for the LOD 2 profiles in notes/issue-14.md (round 4).
"""
import sys, collections, re
cnt = collections.Counter(); stack=[]; tot=[0]
keys=["rank_fine","scan_codes","rerank","prepare","top_fine","drain_sorted","offer","sq4_dots","pq4_scan","dots_t16","select_nth","sort","member_score","dot_avx2","malloc","free","hit"]
def flush():
    if stack and any(sys.argv[1] in s for s in stack):
        tot[0]+=1
        i=[j for j,s in enumerate(stack) if sys.argv[1] in s][-1]
        # path from search_with downward
        path=stack[:i][::-1]
        names=[]
        for s in path:
            for k in keys:
                if k in s and (not names or names[-1]!=k): names.append(k)
        cnt["/".join(names[:3])]+=1
for line in sys.stdin:
    line=line.rstrip("\n")
    if not line.strip():
        flush(); stack.clear(); continue
    if line[0] in "\t ":
        p=line.strip().split(None,1)
        if len(p)==2:
            s=re.sub(r"\+0x[0-9a-f]+.*$","",p[1]); s=re.sub(r"\s*\(.*\)$","",s); stack.append(s)
flush()
print("total", tot[0])
for s,c in cnt.most_common(25): print(f"{100*c/tot[0]:6.2f}% {s}")
